"""The requests of one benchmark run, drawn from a seed: prompts (token ids), output lengths,
adapters (round-robin or Zipf popularity) and arrival times (all at once or Poisson).

Pure Python (no torch, no model), so every system gets exactly the same list and the sampling is
unit-tested on its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LengthRange:
    """Integer lengths drawn uniformly from ``low..high`` (both included)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"length range needs 1 <= low <= high, got {self.low}..{self.high}")

    def draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True)
class Request:
    """One request: ``prompt`` token ids, exactly ``max_tokens`` new tokens (EOS ignored), the
    adapter it names (None: the base model), and its arrival in seconds after the run starts
    (0 for a closed loop, where the concurrency limit decides when it is sent)."""

    index: int
    prompt: tuple[int, ...]
    max_tokens: int
    adapter: str | None
    arrival: float = 0.0


def zipf_weights(count: int, exponent: float) -> list[float]:
    """Popularity of ranks ``1..count`` under Zipf: ``p_i = i^-s / sum_j j^-s`` (sums to 1).

    ``s = 0`` is uniform; ``s = 1`` makes rank 1 ``count`` times as popular as rank ``count``.
    """
    if count < 1:
        raise ValueError(f"zipf needs at least one item, got {count}")
    if exponent < 0:
        raise ValueError(f"zipf exponent must be >= 0, got {exponent}")
    raw = [1.0 / (i + 1) ** exponent for i in range(count)]
    total = sum(raw)
    return [w / total for w in raw]


def assign_adapters(
    names: Sequence[str], count: int, zipf: float | None, rng: random.Random, first: int = 0
) -> list[str | None]:
    """The adapter of each of ``count`` requests.

    No names: the base model for all. ``zipf`` None: round-robin from ``first`` (request i
    names ``names[(first + i) % n]``), so any ``n`` consecutive requests name ``n`` distinct
    adapters (the worst case for a step), and successive rounds started at ``first = k * count``
    go on through the names. Else drawn independently with :func:`zipf_weights` (``names[0]``
    the most popular).
    """
    if not names:
        return [None] * count
    if zipf is None:
        return [names[(first + i) % len(names)] for i in range(count)]
    return list(rng.choices(list(names), weights=zipf_weights(len(names), zipf), k=count))


def poisson_arrivals(count: int, rate: float, rng: random.Random) -> list[float]:
    """Arrival times of a Poisson process of ``rate`` requests/s: cumulative sums of
    exponential gaps with mean ``1/rate``; the first request arrives at 0."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be positive, got {rate}")
    times, now = [], 0.0
    for i in range(count):
        if i:
            now += rng.expovariate(rate)
        times.append(now)
    return times


def draw_prompts(
    pool: Sequence[int], lengths: LengthRange, count: int, rng: random.Random
) -> list[tuple[int, ...]]:
    """``count`` prompts: windows of drawn length at drawn offsets of ``pool`` (a tokenized text,
    repeated until it is long enough), so prompts are real text and rarely share a prefix."""
    if not pool:
        raise ValueError("the token pool is empty")
    need = lengths.high * 4
    tokens = list(pool) * (need // len(pool) + 1)
    prompts = []
    for _ in range(count):
        length = lengths.draw(rng)
        start = rng.randrange(len(tokens) - length + 1)
        prompts.append(tuple(tokens[start : start + length]))
    return prompts


@dataclass(frozen=True)
class WorkloadSpec:
    """What to draw: ``requests`` requests with prompt and output lengths from their ranges."""

    requests: int
    prompt_tokens: LengthRange
    output_tokens: LengthRange

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"a workload needs at least one request, got {self.requests}")


def build_requests(
    spec: WorkloadSpec,
    pool: Sequence[int],
    names: Sequence[str],
    zipf: float | None,
    seed: int,
    first_adapter: int = 0,
) -> list[Request]:
    """The requests for ``seed``. Prompts and output lengths depend on the seed only, so every
    scenario of a round shares them and differs only in its adapters (drawn from their own
    stream of the same seed; round-robin from ``first_adapter``)."""
    rng = random.Random(seed)
    prompts = draw_prompts(pool, spec.prompt_tokens, spec.requests, rng)
    outputs = [spec.output_tokens.draw(rng) for _ in range(spec.requests)]
    adapter_rng = random.Random(f"adapters-{seed}")
    adapters = assign_adapters(names, spec.requests, zipf, adapter_rng, first_adapter)
    return [
        Request(i, prompt, out, adapter)
        for i, (prompt, out, adapter) in enumerate(zip(prompts, outputs, adapters, strict=True))
    ]


def with_poisson_arrivals(requests: Sequence[Request], rate: float, seed: int) -> list[Request]:
    """The same requests arriving as a Poisson process of ``rate`` requests/s."""
    times = poisson_arrivals(len(requests), rate, random.Random(f"arrivals-{seed}"))
    return [replace(r, arrival=t) for r, t in zip(requests, times, strict=True)]


def distinct_adapters(requests: Sequence[Request]) -> int:
    return len({r.adapter for r in requests if r.adapter is not None})
