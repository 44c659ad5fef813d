"""The benchmark's report: targets met/missed from per-round ratios, and the tables' shape."""

from __future__ import annotations

import math

import pytest
import report
import scenarios
from scenarios import PROFILES, Target
from stats import RequestRecord, RunStats


def _runs(*tokens_per_s: float) -> list[RunStats]:
    """One run per round, 1 s long, with ``tokens_per_s`` tokens over two requests."""
    return [
        RunStats("x", 1.0, [RequestRecord(0, 0.0, [0.1, 0.2], int(t) // 2, "a"),
                            RequestRecord(1, 0.0, [0.3, 0.5], int(t) - int(t) // 2, "b")])
        for t in tokens_per_s
    ]  # fmt: skip


def test_targets_are_met_missed_reference_or_not_run() -> None:
    results = {"u16": _runs(90, 80, 100), "base": _runs(100, 100, 100), "hf": _runs(10, 10, 10)}
    targets = (
        Target("met", "u16", "base", 0.90),
        Target("missed", "u16", "base", 0.95),
        Target("reference", "base", "hf", None),
        Target("not run", "u64", "base", 0.85),
    )
    assert report.evaluate(targets[0], results) == (pytest.approx(0.90), "met")
    assert report.evaluate(targets[1], results)[1] == "missed"
    assert report.evaluate(targets[2], results) == (pytest.approx(10.0), "reference")
    ratio, status = report.evaluate(targets[3], results)
    assert math.isnan(ratio) and status == "not run"
    lines = report.targets_table(results, targets).splitlines()
    assert lines[0].startswith("| target |") and len(lines) == 2 + len(targets)
    assert "| met | u16 / base | >= 0.9 | 0.90 | met |" in lines
    assert "| not run | u64 / base | >= 0.85 | - | not run |" in lines


def test_every_issue_target_names_rows_the_full_profile_runs() -> None:
    plan = scenarios.plan(PROFILES["full"])
    keys = {s.key for s in plan.scenarios} | set(plan.peers)
    keys |= {scenarios.vllm_key(row) for row in scenarios.VLLM_ROWS}  # with --vllm-python
    for target in scenarios.TARGETS:
        assert {target.numerator, target.denominator} <= keys, target.label


def test_systems_table_has_a_row_per_system_that_ran_and_compares_texts() -> None:
    plan = scenarios.plan(PROFILES["smoke"])
    results = {"base": _runs(50, 60), "hf": _runs(10, 12), "bare": _runs(70, 70)}
    lines = report.systems_table(plan, results).splitlines()
    assert lines[0] == "| " + " | ".join(report.SYSTEM_HEADER) + " |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(rows) == {"base", "hf", "bare"}
    assert rows["base"].startswith("| base | loraplex base model | - | 0 | 2 | 50 |")
    # base: median-throughput round (the lower middle: 50 tok/s), both rounds' range, and
    # the same texts as HF on the first round.
    assert "| 50.0 | 50.0-60.0 |" in rows["base"] and rows["base"].endswith("| 2/2 |")
    assert "| 200 | 298 | 150 | 199 |" in rows["base"]  # TTFTs 0.1, 0.3 s; ITLs 0.1, 0.2 s


def test_the_merged_tenant_and_stores_of_a_plan() -> None:
    plan = scenarios.plan(PROFILES["quick"])
    assert plan.merged_tenant == "t0"
    assert plan.max_rank(scenarios.MAIN) == 16 and plan.max_rank(scenarios.MIXED) == 64
    zipf = next(s for s in plan.scenarios if s.key == "zipf1000")
    assert len(zipf.names) == 1000 and zipf.zipf == 1.0
    with pytest.raises(ValueError, match="positive"):
        scenarios.with_overrides(PROFILES["quick"], rounds=0)


def test_vllm_rows_get_a_side_by_side_table_and_their_targets() -> None:
    plan = scenarios.plan(PROFILES["vllm"])
    assert [s.key for s in plan.scenarios if s.key in scenarios.VLLM_ROWS] == ["base", "u16", "u64"]
    results = {
        "base": _runs(120, 130, 125), "vllm-base": _runs(100, 100, 100),
        "u16": _runs(200, 210, 190), "vllm-u16": _runs(100, 100, 100),
    }  # fmt: skip
    lines = report.vllm_table(results).splitlines()
    assert lines[0].startswith("| row | loraplex tok/s | vLLM tok/s | ratio |")
    assert lines[2].startswith("| base | 125.0 | 100.0 | 1.25 |") and lines[2].endswith("2/2 |")
    assert lines[3].startswith("| u16 | 200.0 | 100.0 | 2.00 |") and len(lines) == 4
    assert "| vllm-u16 | vLLM 16 adapters, round-robin |" in report.systems_table(plan, results)
    status = {t.label: report.evaluate(t, results)[1] for t in scenarios.TARGETS}
    assert status["7a. base vs vLLM base"] == "met" and status["7b. 16 adapters vs vLLM"] == "met"
    assert status["7c. 64 adapters vs vLLM"] == "not run"
    assert "loraplex vs vLLM" in report.full_report("# x", plan, results, [])
