"""bench/gpu.py --smoke: the GPU benchmark's code at tiny shapes (CPU: Triton's interpreter),
in a process where fastapi and the server's other web packages cannot be imported."""

from __future__ import annotations

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
    assert all(run["tokens_per_s"] > 0 for run in report["e2e"])
    assert "| add_lora |" in (tmp_path / "gpu.md").read_text()
