"""The affinity simulation: the real scheduler and slot cache under a Zipf closed loop."""

from __future__ import annotations

from affinity_sim import Load, simulate

from loraplex.config import SchedulerConfig


def test_affinity_saves_slot_loads_where_seats_are_short_and_zero_skips_is_the_fair_order():
    load = Load(adapters=64, clients=32, requests=120)
    off = simulate(load, SchedulerConfig(max_num_seqs=8, adapter_affinity=False), 16, seed=0)
    on_32 = SchedulerConfig(max_num_seqs=8, adapter_affinity=True, adapter_affinity_max_skips=32)
    on = simulate(load, on_32, 16, seed=0)
    assert on.loads < off.loads and on.distinct_per_step < off.distinct_per_step
    assert off.steps > 120 * 8 / 8  # every request served: at least its output tokens a seat
    fair = SchedulerConfig(max_num_seqs=8, adapter_affinity=True, adapter_affinity_max_skips=0)
    assert simulate(load, fair, 16, seed=0) == off
