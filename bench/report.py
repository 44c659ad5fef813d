"""The serving benchmark's report: the systems table, the targets table (met / missed), the
latency-vs-load table, and the files of a run (``table.md``, ``results.json``) in its folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from common import markdown_table
from scenarios import PEERS, TARGETS, VLLM_ROWS, Plan, Target, vllm_key
from stats import RunStats, median_ratio, median_run

Results = Mapping[str, Sequence[RunStats]]  # system key -> one run per round, in round order


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def same_texts(results: Results, key: str, other: str | None) -> str:
    """How many requests of the first round got the same text from both rows, as ``k/n``."""
    if other is None or other not in results or key not in results:
        return "-"
    mine, theirs = results[key][0].texts(), results[other][0].texts()
    if not mine or len(mine) != len(theirs) or not any(theirs):
        return "-"
    return f"{sum(a == b for a, b in zip(mine, theirs, strict=True))}/{len(mine)}"


def _row(key: str, label: str, adapters: str, runs: Sequence[RunStats], same: str) -> list[str]:
    median = median_run(runs)
    speeds = [r.tokens_per_s for r in runs]
    lat = median.latency_ms()
    return [
        key, label, adapters, str(median.distinct_adapters), str(median.requests),
        str(median.output_tokens),
        f"{median.tokens_per_s:.1f}", f"{min(speeds):.1f}-{max(speeds):.1f}",
        f"{median.requests_per_s:.2f}",
        ms(lat["ttft_p50"]), ms(lat["ttft_p99"]), ms(lat["itl_p50"]), ms(lat["itl_p99"]), same,
    ]  # fmt: skip


SYSTEM_HEADER = [
    "row", "system", "adapters", "distinct", "requests", "output tokens", "tok/s (median)",
    "tok/s (rounds)", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms",
    "same text",
]  # fmt: skip


def systems_table(plan: Plan, results: Results) -> str:
    """One row per scenario and peer that ran: its median-throughput round, all its numbers."""
    # Rows whose texts should equal another row's (same requests and weights, greedy).
    same_as = {"base": "hf", "peft-mixed": plan.peer_scenario, "peft-seq": plan.peer_scenario}
    rows = []
    for s in plan.scenarios:
        if s.key in results:
            same = same_texts(results, s.key, same_as.get(s.key))
            rows.append(_row(s.key, s.label, s.adapters, results[s.key], same))
    for key in plan.peers:
        if key in results:
            adapters = f"as {plan.peer_scenario}" if key.startswith("peft") else "-"
            same = same_texts(results, key, same_as.get(key))
            rows.append(_row(key, PEERS[key], adapters, results[key], same))
    for row in VLLM_ROWS:
        key = vllm_key(row)
        if key in results:
            scenario = next(s for s in plan.scenarios if s.key == row)
            label = f"vLLM {scenario.label.removeprefix('loraplex ')}"
            same = same_texts(results, key, row)
            rows.append(_row(key, label, scenario.adapters, results[key], same))
    return markdown_table(SYSTEM_HEADER, rows)


def vllm_table(results: Results) -> str:
    """loraplex and vLLM side by side per row: throughput ratio (median of the per-round
    ratios) and latency percentiles of each median round."""
    rows = []
    for row in VLLM_ROWS:
        key = vllm_key(row)
        if key not in results or row not in results:
            continue
        ours, theirs = median_run(results[row]), median_run(results[key])
        a, b = ours.latency_ms(), theirs.latency_ms()

        def pair(lat: dict[str, float], what: str) -> str:
            return f"{ms(lat[what + '_p50'])} / {ms(lat[what + '_p99'])}"

        rows.append([
            row, f"{ours.tokens_per_s:.1f}", f"{theirs.tokens_per_s:.1f}",
            f"{median_ratio(results[row], results[key]):.2f}",
            pair(a, "ttft"), pair(b, "ttft"), pair(a, "itl"), pair(b, "itl"),
            same_texts(results, row, key),
        ])  # fmt: skip
    header = ["row", "loraplex tok/s", "vLLM tok/s", "ratio", "TTFT p50/p99 ms loraplex",
              "vLLM", "ITL p50/p99 ms loraplex", "vLLM", "same text"]  # fmt: skip
    return markdown_table(header, rows)


def evaluate(target: Target, results: Results) -> tuple[float, str]:
    """(ratio, status): the median over rounds of the per-round ratio of tokens/s (or of
    decode-step times, ``per_step``), and
    ``met``/``missed`` (``reference`` without a minimum, ``not run`` without both rows)."""
    if target.numerator not in results or target.denominator not in results:
        return math.nan, "not run"
    ratio = median_ratio(
        results[target.numerator], results[target.denominator], per_step=target.per_step
    )
    if target.minimum is None:
        return ratio, "reference"
    return ratio, "met" if ratio >= target.minimum else "missed"


def targets_table(results: Results, targets: Sequence[Target] = TARGETS) -> str:
    rows = []
    for t in targets:
        ratio, status = evaluate(t, results)
        wanted = "-" if t.minimum is None else f">= {t.minimum:g}"
        shown = "-" if math.isnan(ratio) else f"{ratio:.2f}"
        rows.append([t.label, f"{t.numerator} / {t.denominator}", wanted, shown, status])
    return markdown_table(["target", "rows", "wanted", "ratio (median of rounds)", "status"], rows)


def sweep_table(sweep: Sequence[tuple[float, RunStats]]) -> str:
    """Latency against offered load: one Poisson run per arrival rate."""
    rows = []
    for rate, run in sweep:
        lat = run.latency_ms()
        rows.append([
            f"{rate:.2f}", f"{run.requests_per_s:.2f}", f"{run.tokens_per_s:.1f}",
            ms(lat["ttft_p50"]), ms(lat["ttft_p99"]), ms(lat["itl_p50"]), ms(lat["itl_p99"]),
            str(run.failed),
        ])  # fmt: skip
    header = ["offered req/s", "served req/s", "tok/s", "TTFT p50 ms", "TTFT p99 ms",
              "ITL p50 ms", "ITL p99 ms", "failed"]  # fmt: skip
    return markdown_table(header, rows)


def full_report(
    header: str, plan: Plan, results: Results, sweep: Sequence[tuple[float, RunStats]]
) -> str:
    parts = [header, "", systems_table(plan, results), "", targets_table(results)]
    if any(vllm_key(row) in results for row in VLLM_ROWS):
        parts += ["", "loraplex vs vLLM (same requests, same run):", "", vllm_table(results)]
    if sweep:
        parts += ["", f"Latency vs load ({plan.peer_scenario}, Poisson arrivals):", ""]
        parts.append(sweep_table(sweep))
    return "\n".join(parts) + "\n"


def write_results(
    out_dir: Path,
    report: str,
    plan: Plan,
    results: Results,
    sweep: Sequence[tuple[float, RunStats]],
    extra: Mapping[str, object] | None = None,
) -> None:
    """``table.md`` (the printed report) and ``results.json`` (every run's summary, plus
    ``extra``'s entries: the servers' memory, the quantized targets)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text(report)
    data = {
        "profile": plan.profile.name,
        "runs": {key: [r.summary() for r in runs] for key, runs in results.items()},
        "targets": {
            t.label: dict(zip(("ratio", "status"), evaluate(t, results), strict=True))
            for t in TARGETS
        },
        "sweep": [{"offered_requests_per_s": rate, **run.summary()} for rate, run in sweep],
        **(extra or {}),
    }
    (out_dir / "results.json").write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
