"""The benchmark's request sampling: Zipf popularity, round-robin, Poisson arrivals, lengths."""

from __future__ import annotations

import itertools
import random
import statistics
from collections import Counter

import pytest
from workload import (
    LengthRange,
    WorkloadSpec,
    assign_adapters,
    build_requests,
    distinct_adapters,
    draw_prompts,
    poisson_arrivals,
    with_poisson_arrivals,
    zipf_weights,
)


def test_zipf_weights_follow_the_power_law_and_sum_to_one() -> None:
    weights = zipf_weights(1000, 1.0)
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] / weights[9] == pytest.approx(10.0)  # p_1 / p_10 = 10^s
    assert weights[0] / weights[-1] == pytest.approx(1000.0)
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)
    steep = zipf_weights(3, 2.0)
    assert steep == pytest.approx([1 / 1.3611, 0.25 / 1.3611, (1 / 9) / 1.3611], rel=1e-4)


@pytest.mark.parametrize(("count", "exponent"), [(0, 1.0), (3, -0.5)])
def test_zipf_weights_refuse_bad_input(count: int, exponent: float) -> None:
    with pytest.raises(ValueError, match="zipf"):
        zipf_weights(count, exponent)


def test_zipf_sampling_matches_the_weights() -> None:
    names = [f"a{i}" for i in range(8)]
    drawn = assign_adapters(names, 40_000, 1.0, random.Random(0))
    counts = Counter(drawn)
    weights = zipf_weights(8, 1.0)
    for i, name in enumerate(names):
        assert counts[name] / 40_000 == pytest.approx(weights[i], abs=0.01)


def test_round_robin_uses_every_adapter_and_consecutive_requests_differ() -> None:
    names = [f"a{i}" for i in range(5)]
    drawn = assign_adapters(names, 12, None, random.Random(0))
    assert drawn == [names[i % 5] for i in range(12)]
    # a later round goes on where the last stopped (here at request 8 of 12: a3, a4, a0, ...)
    assert assign_adapters(names, 4, None, random.Random(0), first=8) == ["a3", "a4", "a0", "a1"]
    assert assign_adapters([], 3, 1.0, random.Random(0)) == [None, None, None]


def test_poisson_arrivals_have_exponential_gaps_of_the_rate() -> None:
    times = poisson_arrivals(20_000, 4.0, random.Random(1))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)  # exponential: sd = mean
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(3, 0.0, random.Random(0))


def test_length_range_draws_within_bounds_and_refuses_bad_ranges() -> None:
    rng = random.Random(2)
    lengths = LengthRange(3, 7)
    drawn = {lengths.draw(rng) for _ in range(500)}
    assert drawn == set(range(3, 8)) and lengths.mean == 5.0
    for low, high in ((0, 4), (5, 4)):
        with pytest.raises(ValueError, match="length range"):
            LengthRange(low, high)


def test_prompts_are_windows_of_the_pool_with_drawn_lengths() -> None:
    pool = list(range(50))
    prompts = draw_prompts(pool, LengthRange(4, 30), 100, random.Random(3))
    for prompt in prompts:
        assert 4 <= len(prompt) <= 30
        # consecutive pool tokens, wrapping around the repeated pool
        assert all((b - a) % 50 == 1 for a, b in itertools.pairwise(prompt))
    with pytest.raises(ValueError, match="empty"):
        draw_prompts([], LengthRange(1, 2), 1, random.Random(0))


def test_scenarios_of_one_seed_share_prompts_and_lengths_but_not_adapters() -> None:
    spec = WorkloadSpec(16, LengthRange(5, 20), LengthRange(2, 9))
    pool = list(range(100))
    base = build_requests(spec, pool, [], None, seed=7)
    zipf = build_requests(spec, pool, [f"z{i}" for i in range(100)], 1.0, seed=7)
    again = build_requests(spec, pool, [f"z{i}" for i in range(100)], 1.0, seed=7)
    other_round = build_requests(spec, pool, [], None, seed=8)
    assert [(r.prompt, r.max_tokens) for r in base] == [(r.prompt, r.max_tokens) for r in zipf]
    assert zipf == again
    assert [r.prompt for r in other_round] != [r.prompt for r in base]
    assert distinct_adapters(base) == 0 and 1 < distinct_adapters(zipf) <= 16
    assert all(2 <= r.max_tokens <= 9 for r in base)


def test_poisson_workload_keeps_the_requests_and_sets_their_arrivals() -> None:
    spec = WorkloadSpec(50, LengthRange(5, 6), LengthRange(2, 3))
    requests = build_requests(spec, list(range(20)), ["a"], None, seed=0)
    arriving = with_poisson_arrivals(requests, 10.0, seed=0)
    assert [r.prompt for r in arriving] == [r.prompt for r in requests]
    assert [r.arrival for r in arriving] == sorted(r.arrival for r in arriving)
    assert arriving[-1].arrival > 0
