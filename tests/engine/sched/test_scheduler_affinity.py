"""Scheduler with adapter affinity: requests whose adapter is in the step, pinned, resident or
none go first when seats or slots are short; the starvation bound caps how often a request is
passed over; tenants keep their round-robin turns; with affinity off the order is the fair one."""

from __future__ import annotations

import random

import pytest
from scheduler_helpers import make_scheduler, make_seq, run_step

from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.affinity import COLD, FREE, RESIDENT, STARVED, admission_tier
from loraplex.engine.sched.scheduler import Scheduler
from loraplex.engine.sched.step_budget import StepBudget


def admitted(sched: Scheduler) -> list[str]:
    """Run one step; the request ids it admitted (first chunk), in admission order."""
    return [s.seq.request_id for s in run_step(sched).scheduled if s.start == 0]


def tenant_seq(rid: str, adapter: str | None, tenant: str, max_tokens: int = 4) -> Sequence:
    seq = make_seq(rid, 2, adapter, max_tokens=max_tokens)
    seq.tenant = tenant
    return seq


def test_tiers_of_one_step() -> None:
    budget = StepBudget(64, 8, max_loras=4, adapters={"A"}, pinned=frozenset({"P"}))
    resident = {"R"}.__contains__

    def tier(adapter: str | None, merged: bool = False, skips: int = 0) -> int:
        seq = make_seq("r", 2, adapter)
        seq.merged, seq.adapter_skips = merged, skips
        return admission_tier(seq, budget, resident, max_skips=3)

    assert [tier(None), tier("A"), tier("P"), tier("M", merged=True)] == [FREE] * 4
    assert (tier("R"), tier("C")) == (RESIDENT, COLD)
    assert tier("C", skips=3) == STARVED  # passed over max_skips times: no more
    budget.merged = "M"
    assert tier("N", merged=True) == COLD  # a second pre-merged adapter cannot run this step


@pytest.mark.parametrize("affinity", [False, True])
def test_slots_full_affinity_takes_running_then_resident_adapters(affinity: bool) -> None:
    # Two slots; A is running. Three seats are left for: c (cold C), b (B, resident in a
    # device slot), a (A, in the step), n (base model), in that order of arrival.
    sched = make_scheduler(max_loras=2, seqs=4, affinity=affinity, is_resident={"B"}.__contains__)
    sched.add(make_seq("running", 2, "A", max_tokens=8))
    run_step(sched)
    for rid, adapter in [("c", "C"), ("b", "B"), ("a", "A"), ("n", None)]:
        sched.add(make_seq(rid, 2, adapter))
    if affinity:  # free ones first, then the resident adapter takes the free slot
        assert admitted(sched) == ["a", "n", "b"]
        assert [s.request_id for s in sched.waiting] == ["c"]
    else:  # arrival order: C takes the free slot, so B does not fit
        assert admitted(sched) == ["c", "a", "n"]
        assert [s.request_id for s in sched.waiting] == ["b"]


def stream_of_hot_requests(
    affinity: bool, starvation_steps: int, max_skips: int = 10**9
) -> tuple[int | None, list[int]]:
    """One seat cycles (the other holds a long A request) while one A request arrives a step;
    ``b`` (cold B, a slot is free for it) waits from the start. Returns the step that admits
    ``b`` (None within 60) and b's skips after each step before it."""
    sched = make_scheduler(
        max_loras=2, seqs=2, num_blocks=512, max_model_len=128,
        starvation_steps=starvation_steps, affinity=affinity, max_skips=max_skips,
    )  # fmt: skip
    sched.add(make_seq("a_long", 2, "A", max_tokens=100))
    run_step(sched)
    b = make_seq("b", 2, "B", max_tokens=2)
    sched.add(b)
    skips = []
    for step in range(60):
        sched.add(make_seq(f"a{step}", 2, "A", max_tokens=2))
        if "b" in admitted(sched):
            return step, skips
        skips.append(b.adapter_skips)
    return None, skips


def test_a_cold_request_is_passed_over_at_most_starvation_steps_times() -> None:
    # Without affinity b takes the first free seat; with it, each freed seat goes to a newer
    # A request (in the step: no slot) and b is passed over: once per admission it misses.
    assert stream_of_hot_requests(affinity=False, starvation_steps=5) == (0, [])
    step, skips = stream_of_hot_requests(affinity=True, starvation_steps=5)
    assert skips == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # an A is admitted every other step
    assert step == 10  # the next free seat, as soon as b is STARVED
    step, skips = stream_of_hot_requests(affinity=True, starvation_steps=2)
    assert (step, max(skips)) == (4, 2)
    # --adapter-affinity-max-skips bounds it below the guard's starvation_steps.
    step, skips = stream_of_hot_requests(affinity=True, starvation_steps=32, max_skips=3)
    assert (step, max(skips)) == (6, 3)
    assert stream_of_hot_requests(affinity=True, starvation_steps=32, max_skips=0) == (0, [])
    # The bound is what lets b in: without it the hot stream passes it over for good.
    step, skips = stream_of_hot_requests(affinity=True, starvation_steps=10**9)
    assert step is None and skips[-1] == 30


def test_the_starvation_guard_still_drains_the_batch_for_a_new_adapter() -> None:
    # One slot, held by a stream of A requests: b's adapter never fits, so it trips the guard
    # after starvation_steps skips, the A requests drain, and b runs (as without affinity).
    for affinity in (False, True):
        sched = make_scheduler(
            max_loras=1, seqs=64, num_blocks=256, starvation_steps=5, affinity=affinity
        )
        sched.add(make_seq("a_first", 2, "A", max_tokens=4))
        sched.add(make_seq("b", 2, "B", max_tokens=2))
        for step in range(100):
            sched.add(make_seq(f"a{step}", 2, "A", max_tokens=4))
            if "b" in admitted(sched):
                break
        assert step == 8


def test_hot_requests_of_one_tenant_do_not_overtake_another_tenants_turn() -> None:
    # Tenant "flood" has A running and queues a cold request, then many on A; tenant "other"
    # queues one cold request later. Two seats a step: flood's first turn goes to its own hot
    # request (ahead of its own cold one), but other's turn comes next, cold or not.
    sched = make_scheduler(max_loras=4, seqs=3, num_blocks=256, affinity=True)
    sched.add(tenant_seq("running", "A", "flood", max_tokens=20))
    run_step(sched)
    sched.add(tenant_seq("flood_cold", "C", "flood"))
    for i in range(6):
        sched.add(tenant_seq(f"flood_a{i}", "A", "flood"))
    sched.add(tenant_seq("other_cold", "D", "other"))
    assert admitted(sched) == ["flood_a0", "other_cold"]
    # The queue itself keeps arrival order: affinity reorders a step's walk, not the queue.
    assert [s.request_id for s in sched.waiting][:3] == ["flood_cold", "flood_a1", "flood_a2"]


def test_waiting_queue_affinity_order_keeps_each_tenants_turns() -> None:
    sched = make_scheduler(affinity=True)
    for rid, tenant in [("x0", "x"), ("y0", "y"), ("x1", "x"), ("x2", "x"), ("y1", "y")]:
        sched.add(tenant_seq(rid, None, tenant))
    hot = {"x2", "y1"}
    order = sched.waiting.ordered(lambda seq: 0 if seq.request_id in hot else 1)
    assert [s.request_id for s in order] == ["x2", "y1", "x0", "y0", "x1"]
    assert [s.request_id for s in sched.waiting] == ["x0", "y0", "x1", "y1", "x2"]


def random_workload(
    affinity: bool, seed: int
) -> tuple[Scheduler, list[tuple[list[str], list[str]]], list[str]]:
    """Three tenants, Zipf-ish adapters, arrivals over 40 steps, run to the end. Returns the
    scheduler, each step's waiting order (before it) and admissions, and every request id
    admitted for the first time or again after a preemption."""
    rng = random.Random(seed)
    sched = make_scheduler(
        max_loras=3, seqs=6, tokens=32, num_blocks=96, max_model_len=48, starvation_steps=4,
        affinity=affinity, is_resident=lambda adapter: adapter in {"A0", "A1"},
    )  # fmt: skip
    adapters = [None, "A0", "A0", "A0", "A1", "A1", "A2", "A3", "A4", "A5"]
    ids, steps = [], []
    for step in range(400):
        if step < 40:
            for _ in range(rng.randint(0, 3)):
                rid = f"r{len(ids)}"
                seq = make_seq(rid, rng.randint(1, 20), rng.choice(adapters), rng.randint(1, 6))
                seq.tenant = rng.choice("xyz")
                sched.add(seq)
                ids.append(rid)
        before = [s.request_id for s in sched.waiting]
        out = run_step(sched)
        steps.append((before, [s.seq.request_id for s in out.scheduled if s.start == 0]))
        ids += [seq.request_id for seq in out.preempted]  # admitted again later
        if step >= 40 and not sched.has_unfinished():
            break
    return sched, steps, ids


@pytest.mark.parametrize("affinity", [False, True])
def test_random_workloads_finish_within_the_budgets(affinity: bool) -> None:
    for seed in range(5):
        sched, steps, ids = random_workload(affinity, seed)
        assert not sched.has_unfinished()  # run_step checked every step's budgets
        assert sorted(rid for _, step in steps for rid in step) == sorted(ids)


def test_without_affinity_each_step_admits_in_the_fair_order() -> None:
    # Whatever it skips, a step without affinity admits requests in the waiting queue's
    # order (preempted, then tenants round-robin, FCFS within a tenant): today's order.
    reordered = 0
    for seed in range(5):
        _, off, _ = random_workload(False, seed)
        for before, step in off:
            assert step == [rid for rid in before if rid in set(step)]
        _, on, _ = random_workload(True, seed)
        reordered += sum(step != [r for r in before if r in set(step)] for before, step in on)
    assert reordered > 0  # the same workloads do reorder with affinity on
