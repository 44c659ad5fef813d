"""PNG plots of a serving benchmark run (matplotlib, the ``bench`` extra; no display needed):
throughput against the number of adapters, and latency percentiles against offered load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from report import Results
from scenarios import Plan
from stats import RunStats, median_run


def _pyplot():  # -> matplotlib.pyplot, headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_vs_adapters(plan: Plan, results: Results, path: Path) -> Path | None:
    """Median tokens/s of each adapter-count row (Zipf and round-robin series), with the base
    model and the bare forward (r) as horizontal lines. None if no such row ran."""
    series: dict[str, list[tuple[int, float]]] = {}
    for s in plan.scenarios:
        if s.key in results and s.family:
            point = (len(s.names), median_run(results[s.key]).tokens_per_s)
            series.setdefault(s.family, []).append(point)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    for key, style, label in (("base", "--", "base model"), ("bare", ":", "(r) bare forward")):
        if key in results:
            speed = median_run(results[key]).tokens_per_s
            ax.axhline(speed, linestyle=style, color="gray", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("adapters the requests draw from")
    ax.set_ylabel("output tokens/s (median of rounds)")
    ax.set_title(f"Throughput vs adapters, {plan.profile.concurrency} concurrent")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_vs_load(plan: Plan, sweep: Sequence[tuple[float, RunStats]], path: Path) -> Path | None:
    """TTFT and ITL p50/p99 (ms) against offered requests/s. None without a sweep."""
    if not sweep:
        return None
    plt = _pyplot()
    fig, (ttft, itl) = plt.subplots(1, 2, figsize=(10, 4))
    rates = [rate for rate, _ in sweep]
    latencies = [run.latency_ms() for _, run in sweep]
    for ax, metric, title in ((ttft, "ttft", "time to first token"), (itl, "itl", "inter-token")):
        for q in ("p50", "p99"):
            ax.plot(rates, [lat[f"{metric}_{q}"] for lat in latencies], marker="o", label=q)
        ax.set_xlabel("offered load (requests/s, Poisson)")
        ax.set_ylabel("ms")
        ax.set_title(f"{title} latency, {plan.peer_scenario}")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
