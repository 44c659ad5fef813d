"""What one timed run of a system measured: per-request token times -> tokens/s, requests/s,
time to first token (TTFT) and inter-token latency (ITL) percentiles. Pure Python.

Conventions (the same for the HTTP server and the in-process peers):

- TTFT of a request = its first token's time - the time it was sent (for a Poisson run, its
  scheduled arrival; for a static batch, the start of the run, so a later batch's wait counts).
- ITL = the gaps between a request's consecutive token arrivals, pooled over all requests.
  Over HTTP a gap is between two streamed chunks (one chunk per engine step and request).
- Output tokens/s = all requests' output tokens / wall time from the first request sent to the
  last token received; requests/s = requests / the same wall time.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default): position ``(n - 1) * q / 100`` in the sorted values. NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class RequestRecord:
    """One request's timing, in seconds on one clock (``time.perf_counter``)."""

    index: int
    sent: float
    token_times: list[float] = field(default_factory=list)  # one per chunk or step received
    output_tokens: int = 0
    text: str = ""
    adapter: str | None = None  # the adapter the request named (None: the base model)

    @property
    def ttft(self) -> float | None:
        """None without token times, or when the send time is unknown (NaN)."""
        if not self.token_times or math.isnan(self.sent):
            return None
        return self.token_times[0] - self.sent

    @property
    def gaps(self) -> list[float]:
        times = self.token_times
        return [b - a for a, b in itertools.pairwise(times)]


@dataclass
class RunStats:
    """One timed run of one system over one list of requests."""

    system: str
    seconds: float
    records: list[RequestRecord]
    failed: int = 0  # requests the server refused or broke off (not in ``records``)

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def distinct_adapters(self) -> int:
        return len({r.adapter for r in self.records if r.adapter is not None})

    @property
    def ttfts(self) -> list[float]:
        return [t for t in (r.ttft for r in self.records) if t is not None]

    @property
    def itls(self) -> list[float]:
        return [gap for r in self.records for gap in r.gaps]

    def latency_ms(self) -> dict[str, float]:
        """TTFT and ITL p50/p99 in milliseconds (NaN where the system has no token times)."""
        ttft, itl = self.ttfts, self.itls
        return {
            "ttft_p50": percentile(ttft, 50) * 1e3,
            "ttft_p99": percentile(ttft, 99) * 1e3,
            "itl_p50": percentile(itl, 50) * 1e3,
            "itl_p99": percentile(itl, 99) * 1e3,
        }

    def texts(self) -> list[str]:
        return [r.text for r in sorted(self.records, key=lambda r: r.index)]

    def summary(self) -> dict[str, float | int | str]:
        return {
            "system": self.system,
            "requests": self.requests,
            "failed": self.failed,
            "output_tokens": self.output_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "requests_per_s": self.requests_per_s,
            "distinct_adapters": self.distinct_adapters,
            **self.latency_ms(),
        }


def median_run(runs: Sequence[RunStats]) -> RunStats:
    """The run with the median tokens/s (the lower middle one for an even count): its latencies
    are reported with it, so the row is one real run, not a mix of runs."""
    if not runs:
        raise ValueError("no runs")
    return sorted(runs, key=lambda r: r.tokens_per_s)[(len(runs) - 1) // 2]


def median_ratio(
    numerators: Sequence[RunStats], denominators: Sequence[RunStats], per_step: bool = False
) -> float:
    """The median over rounds of ``tokens/s(num) / tokens/s(den)``, round by round: the same
    round ran both on the same machine state, so each round's ratio is the honest one. With
    ``per_step``: of ``ITL p50(den) / ITL p50(num)`` (decode-step speed, prefill left out)."""

    def speed(run: RunStats) -> float:
        if not per_step:
            return run.tokens_per_s
        itl = run.latency_ms()["itl_p50"]
        return 1 / itl if itl > 0 else math.nan  # NaN too when the run has no token times

    pairs = [(speed(a), speed(b)) for a, b in zip(numerators, denominators, strict=True)]
    ratios = [a / b for a, b in pairs if b > 0 and not math.isnan(a)]
    return statistics.median(ratios) if ratios else math.nan
