"""bench/gpu.py --smoke: the GPU benchmark's code at tiny shapes (CPU: Triton's interpreter),
in a process where fastapi and the server's other web packages cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from triton_check import triton_tests

pytestmark = triton_tests
ROOT = Path(__file__).parents[1]
# What the GPU machine lacks: the script must run without any of them.
ABSENT = ("fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "peft", "gguf")
RUN = (
    "import os, runpy, sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None  # import fails\n"
    "sys.argv = [sys.argv[2], *sys.argv[3:]]\n"
    "sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python script` does\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def test_smoke_run_checks_every_section_and_writes_its_reports(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "server"), env.get("PYTHONPATH")]))
    script = str(ROOT / "bench" / "gpu.py")
    done = subprocess.run(
        [sys.executable, "-c", RUN, ",".join(ABSENT), script, "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["errors"] == {} and report["failed_checks"] == []
    kernels = {case["section"] for case in report["kernels"]}
    assert kernels == {"add_lora", "attention"} and len(report["kernels"]) == 7 + 2
    assert {(run["backends"], run["adapters"]) for run in report["e2e"]} == {
        ("triton", 0),
        ("triton", 2),
        ("torch", 0),
        ("torch", 2),
    }
    assert all(run["tokens_per_s"] > 0 for run in report["e2e"])  # no graphs off CUDA
    assert "adapters" in report["target"] and "graphs" not in report["target"]
    assert "No CUDA graphs here" in (tmp_path / "gpu.md").read_text()
    assert "| add_lora |" in (tmp_path / "gpu.md").read_text()
    # Section 4: the tiny model as an NF4 base (dummy weights quantized at load) beside bf16.
    assert [(run["backends"], run["adapters"]) for run in report["nf4"]] == [
        ("nf4-triton", 0),
        ("nf4-triton", 2),
    ]
    bases = {m["base"]: m["weight_bytes"] for m in report["memory"]}
    assert set(bases["nf4"]) == {"nf4", "float32"} and set(bases["float32"]) == {"float32"}
    assert "| nf4-triton | 2 |" in (tmp_path / "gpu.md").read_text()


def test_the_report_shows_graphs_against_eager_and_both_targets() -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    runs = [
        {"backends": backends, "adapters": n, "tokens_per_s": speed, "itl_ms": 64e3 / speed}
        for backends, n, speed in [
            ("triton", 0, 1000.0),
            ("triton", 64, 800.0),
            ("triton+graphs", 0, 2500.0),
            ("triton+graphs", 64, 2300.0),
            ("torch", 0, 500.0),
        ]
    ]
    target = gpu.targets(runs)
    assert target["adapters"]["backends"] == "triton+graphs"
    assert target["adapters"]["ratio_to_base"] == 2300 / 2500
    assert target["graphs"]["speedup_by_adapters"] == {0: 2.5, 64: 2300 / 800}
    report = {"smoke": False, "environment": {}, "dtype": "bfloat16", "wall_s": 1.0}
    text = gpu.markdown(report | {"e2e": runs, "errors": {}})
    assert "| triton+graphs | 64 | 2300 | 27.8 | 0.92x | 2.88x |" in text
    assert "| triton | 64 | 800 | 80.0 | 0.80x |  |" in text
    assert "No CUDA graphs" not in text
