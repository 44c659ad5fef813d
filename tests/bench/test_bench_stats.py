"""The benchmark's statistics: percentiles, TTFT/ITL of records, tokens/s, medians of rounds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from stats import RequestRecord, RunStats, median_ratio, median_run, percentile


def test_percentile_matches_numpy_linear_interpolation() -> None:
    rng = random.Random(0)
    for n in (1, 2, 5, 101):
        values = [rng.uniform(0, 100) for _ in range(n)]
        for q in (0, 1, 25, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 0.0], 99) == pytest.approx(9.9)


def test_percentile_of_nothing_is_nan_and_q_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def _record(index: int, sent: float, times: list[float]) -> RequestRecord:
    return RequestRecord(index, sent, times, len(times), f"text {index}")


def test_run_stats_from_records() -> None:
    records = [_record(0, 0.0, [0.5, 0.6, 0.8]), _record(1, 0.2, [1.0, 1.5])]
    records[1].adapter = "a"
    run = RunStats("x", 2.0, records)
    assert run.distinct_adapters == 1
    assert records[0].ttft == 0.5 and records[1].ttft == pytest.approx(0.8)
    assert records[0].gaps == pytest.approx([0.1, 0.2])
    assert run.output_tokens == 5 and run.tokens_per_s == 2.5 and run.requests_per_s == 1.0
    assert sorted(run.itls) == pytest.approx([0.1, 0.2, 0.5])
    lat = run.latency_ms()
    assert lat["ttft_p50"] == pytest.approx(650.0)
    assert lat["itl_p50"] == pytest.approx(200.0)
    assert lat["itl_p99"] == pytest.approx(494.0)
    assert run.summary()["tokens_per_s"] == 2.5


def test_run_stats_without_token_times_has_nan_latencies() -> None:
    run = RunStats("bare", 1.0, [RequestRecord(0, 0.0, [], 8)])
    assert run.tokens_per_s == 8.0
    assert all(math.isnan(v) for v in run.latency_ms().values())


def _run(tokens_per_s: float) -> RunStats:
    return RunStats(str(tokens_per_s), 1.0, [RequestRecord(0, 0.0, [], int(tokens_per_s))])


def test_median_run_and_median_ratio_of_rounds() -> None:
    runs = [_run(30), _run(10), _run(20)]
    assert median_run(runs).tokens_per_s == 20
    assert median_run([_run(10), _run(20)]).tokens_per_s == 10  # the lower middle
    # Ratios round by round: (20/10, 30/30, 10/20) -> median 1.0, not 20/20 by chance.
    assert median_ratio([_run(20), _run(30), _run(10)], [_run(10), _run(30), _run(20)]) == 1.0
    with pytest.raises(ValueError, match="no runs"):
        median_run([])


def _stepped(step_s: float, steps: int = 4, sent: float = math.nan) -> RunStats:
    """A run whose one record got a token every ``step_s`` seconds (no TTFT when sent is NaN)."""
    times = [step_s * (i + 1) for i in range(steps)]
    return RunStats("stepped", step_s * steps, [RequestRecord(0, sent, times, steps)])


def test_per_step_ratio_compares_decode_steps_and_ignores_missing_ttft() -> None:
    bare = _stepped(0.100)
    assert bare.records[0].ttft is None and math.isnan(bare.latency_ms()["ttft_p50"])
    assert bare.latency_ms()["itl_p50"] == pytest.approx(100.0)
    # Steps of 80 ms against 100 ms: 1.25x faster per step, whatever the tokens/s.
    served = _stepped(0.080, sent=0.0)
    assert median_ratio([served], [bare], per_step=True) == pytest.approx(1.25)
    # No token times on one side: no ratio.
    assert math.isnan(median_ratio([served], [_run(10)], per_step=True))
