"""The serving benchmark end to end on the tiny model: its smoke profile starts real
``loraplex serve`` processes, drives them over HTTP, runs every peer, and writes the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scenarios
import serving
from scenarios import PROFILES

ROWS = {"base", "merged", "u16", "mixed4", "zipf1", "zipf8", "zipf8-affinity", "hf", "peft-mixed",
        "peft-seq", "nf4-base", "nf4-u16"}  # fmt: skip


def test_smoke_profile_runs_every_system_and_writes_the_results(
    tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = serving.main(["--smoke", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r")])
    printed = capsys.readouterr().out

    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == ROWS | {"bare"}
    for key in ROWS:  # every request got exactly its tokens, with token times
        [run] = data["runs"][key]
        assert run["requests"] == 4 and run["failed"] == 0, key
        assert run["output_tokens"] >= 8 and run["tokens_per_s"] > 0, key
        assert run["ttft_p50"] > 0 and run["itl_p50"] > 0, key
    assert data["runs"]["bare"][0]["output_tokens"] == 2 * 3  # 2 rows x 3 steps (mean output)
    assert data["runs"]["base"][0]["distinct_adapters"] == 0
    assert data["runs"]["u16"][0]["distinct_adapters"] == 4  # round-robin: 4 requests, 4 names
    assert data["runs"]["peft-seq"][0]["distinct_adapters"] == 4
    targets = data["targets"]
    for label in ("1. 16 adapters vs base", "3b. 16 adapters vs PEFT one at a time"):
        assert targets[label]["status"] in ("met", "missed") and targets[label]["ratio"] > 0
    assert targets["4. 1,000 adapters vs 8 (Zipf)"]["status"] == "not run"
    [point] = data["sweep"]
    assert point["requests"] + point["failed"] == 4

    table = (out / "table.md").read_text()
    assert table in printed and "| u16 | loraplex 16 adapters, round-robin |" in table
    for png in ("throughput_vs_adapters.png", "latency_vs_load.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for server in ("main", "mixed", "main-affinity", "nf4"):
        assert (out / f"server-{server}.log").exists()
    # The NF4 server's weights, by format, beside the float one's (issue 20).
    assert set(data["memory"]["nf4"]["weights"]) == {"nf4", "float32"}
    assert set(data["memory"]["main"]["weights"]) == {"float32"}
    assert data["memory"]["nf4"]["rss"] > 0
    quantized = data["quantized"]
    assert quantized["8a. weight bytes, float32 / NF4"]["status"] in ("met", "missed")
    assert quantized["8b. LoRA tax (u16 vs base), NF4 vs float32"]["status"] in ("met", "missed")
    assert "Quantized base (issue 20):" in table


def test_affinity_rows_run_on_a_server_that_differs_only_by_affinity(tmp_path: Path) -> None:
    args = serving.parse_args(["--full", "--scale", "8,64,1000", "--requests", "40"])
    assert (args.scale, args.requests, args.affinity) == ((8, 64, 1000), 40, None)
    plan = scenarios.plan(
        scenarios.with_overrides(PROFILES["full"], scale=args.scale, affinity=(64, 1000))
    )
    on = [s for s in plan.scenarios if s.server == scenarios.AFFINITY]
    assert [s.key for s in on] == ["zipf64-affinity", "zipf1000-affinity"]
    assert on[0].names == next(s for s in plan.scenarios if s.key == "zipf64").names
    assert plan.store_of(scenarios.AFFINITY) == scenarios.MAIN
    main = serving.server_options(plan, scenarios.MAIN, tmp_path, args)
    with_affinity = serving.server_options(plan, scenarios.AFFINITY, tmp_path, args)
    assert "--adapter-affinity" in with_affinity and "--adapter-affinity" not in main
    assert [option for option in with_affinity if option != "--adapter-affinity"] == main
    assert serving.parse_args(["--affinity", "0"]).affinity == ()
    with pytest.raises(ValueError, match="Zipf counts"):
        scenarios.with_overrides(PROFILES["quick"], affinity=(64,))
