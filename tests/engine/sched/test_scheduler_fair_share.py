"""Scheduler: fair shares of KV blocks and adapter slots between tenants
(engine/sched/fair_share.py).

The tests reproduce the starvations of issue 24 that the scheduler had before the fair shares
(the numbers measured then are in the comments) and show the fix: one tenant's long streams
or its hold on every adapter slot no longer keep another tenant's small request waiting.
"""

from __future__ import annotations

import random

from scheduler_helpers import chunks, make_scheduler, make_seq, run_step

from loraplex.engine.request.sequence import Sequence, SequenceStatus
from loraplex.engine.sched.scheduler import Scheduler, SchedulerOutput


def ids(out: SchedulerOutput) -> list[str]:
    """The request ids of the step's chunks, in order."""
    return [rid for rid, _ in chunks(out)]


def flood_kv(sched: Scheduler, streams: int = 12) -> list[Sequence]:
    """Tenant ``flood`` queues ``streams`` long requests (40-token prompts, 24 tokens out: 16
    blocks of 4 each, 12 of them need 3x the cache) and runs until the cache is full and
    some were preempted."""
    flood = [make_seq(f"f{i}", 40, max_tokens=24, tenant="flood") for i in range(streams)]
    for seq in flood:
        sched.add(seq)
    preempted = 0
    for _ in range(40):
        preempted += len(run_step(sched).preempted)
        if preempted and sched.block_manager.num_free_blocks <= 2:
            break
    assert preempted and sched.block_manager.num_free_blocks <= 2
    return flood


def steps_until_finished(sched: Scheduler, seq: Sequence, limit: int = 500) -> tuple[int, bool]:
    """Steps until ``seq`` finishes, and whether it was ever preempted on the way."""
    preempted = False
    for step in range(1, limit + 1):
        out = run_step(sched)
        preempted |= seq in out.preempted
        if seq.is_finished:
            return step, preempted
    raise AssertionError(f"{seq.request_id} not finished in {limit} steps")


def kv_scheduler() -> Scheduler:
    return make_scheduler(tokens=64, seqs=16, num_blocks=64, block_size=4, max_model_len=64)


def test_a_quiet_tenants_request_is_served_within_a_few_steps_of_a_full_cache() -> None:
    # Before: the flood's preempted streams sat at the front of the queue and, not fitting,
    # stopped admission for everyone: the quiet request finished after 19 steps, once 4 of
    # the flood's streams had.
    sched = kv_scheduler()
    flood = flood_kv(sched)
    quiet = make_seq("quiet", 4, max_tokens=4, tenant="quiet")
    sched.add(quiet)
    steps, preempted = steps_until_finished(sched, quiet)
    assert steps == 4 and not preempted  # what it takes alone: one prefill, three decodes
    while sched.has_unfinished():
        run_step(sched)
    assert all(seq.num_output_tokens == 24 for seq in flood)  # and the flood still finishes


def test_the_tenant_furthest_over_its_share_is_preempted_not_the_one_asking() -> None:
    sched = kv_scheduler()
    flood_kv(sched)
    quiet = make_seq("quiet", 8, max_tokens=20, tenant="quiet")  # needs 7 blocks over time
    sched.add(quiet)  # before: 46 steps, preempted on the way (it was the latest arrival)
    outs = []
    while not quiet.is_finished:
        outs.append(run_step(sched))
        assert quiet.status is not SequenceStatus.WAITING  # admitted at once, never preempted
    assert all(any(s.seq is quiet for s in out.scheduled) for out in outs)  # every step
    victims = [seq.tenant for out in outs for seq in out.preempted]
    assert victims and set(victims) == {"flood"}


def test_an_over_share_tenants_preempted_sequence_does_not_block_an_under_share_one() -> None:
    # 16 blocks of 4. Tenant a runs two sequences (14 blocks); its third waits at the front of
    # the queue, as a preempted one does, needing 5 blocks for its chunk: 2 are free. b's
    # request behind it fits in one. Before: nothing behind a's sequence was admitted.
    sched = make_scheduler(tokens=64, seqs=8, num_blocks=16, block_size=4, max_model_len=64)
    for rid in ("a0", "a1"):
        sched.add(make_seq(rid, 24, max_tokens=20, tenant="a"))
    run_step(sched)
    run_step(sched)  # 2 x 25 tokens: 14 blocks
    waiting_a = make_seq("a2", 20, max_tokens=4, tenant="a")
    sched.add(waiting_a)
    sched.waiting.remove(waiting_a)
    sched.waiting.appendleft(waiting_a)
    sched.add(make_seq("b", 4, max_tokens=2, tenant="b"))
    out = run_step(sched)
    assert ids(out) == ["a0", "a1", "b"] and not out.preempted
    assert sched.waiting[0] is waiting_a


def test_an_under_share_request_reclaims_blocks_in_the_step_it_arrives() -> None:
    # The flood holds every block; the quiet request needs 3 and is admitted in the same step
    # by preempting the flood's latest stream (its chunk of this step withdrawn). Before: not
    # admitted while the flood's preempted streams waited in front of it.
    sched = kv_scheduler()
    flood_kv(sched)
    quiet = make_seq("quiet", 10, max_tokens=2, tenant="quiet")
    sched.add(quiet)
    out = run_step(sched)
    assert ("quiet", 10) in chunks(out)
    assert out.preempted and {seq.tenant for seq in out.preempted} == {"flood"}
    assert not {s.seq.request_id for s in out.scheduled} & {s.request_id for s in out.preempted}


def test_the_oldest_sequence_always_progresses_when_two_cannot_fit_together() -> None:
    # Two tenants' sequences of 40 tokens each in a 64-token cache: fair shares alone would
    # ping-pong; the oldest is never preempted for the other, so both finish, oldest first.
    sched = make_scheduler(tokens=16, seqs=4, num_blocks=16, block_size=4, max_model_len=64)
    first = make_seq("first", 8, max_tokens=32, tenant="a", arrival_time=0.0)
    second = make_seq("second", 8, max_tokens=32, tenant="b", arrival_time=1.0)
    sched.add(first)
    sched.add(second)
    _, preempted = steps_until_finished(sched, first, limit=200)
    assert not preempted and not second.is_finished
    steps_until_finished(sched, second, limit=200)


def hold_every_slot(sched: Scheduler, adapters: int = 4) -> list[Sequence]:
    """Tenant ``flood`` runs one long request on each of ``adapters`` adapters."""
    seqs = [make_seq(f"f{i}", 4, f"F{i}", max_tokens=300, tenant="flood") for i in range(adapters)]
    for seq in seqs:
        sched.add(seq)
    run_step(sched)
    return seqs


def slot_scheduler() -> Scheduler:
    return make_scheduler(max_loras=4, seqs=16, num_blocks=512, max_model_len=320)


def test_a_tenant_holding_every_slot_gives_one_up_for_another_tenant() -> None:
    # Before: the quiet tenant's request on its adapter took 303 steps (until one of the
    # flood's finished), and after 32 of them the starvation guard held back its base-model
    # request too (sent then, it took 263 steps; now 4, as alone).
    sched = slot_scheduler()
    flood = hold_every_slot(sched)
    sched.add(make_seq("own", 4, "Q", max_tokens=4, tenant="quiet"))
    sched.add(make_seq("base", 4, None, max_tokens=4, tenant="quiet"))
    out = run_step(sched)
    assert {"own", "base"} <= {rid for rid, _ in chunks(out)}
    assert out.preempted == [flood[-1]]  # one adapter's sequences: the latest arrival's
    assert len(sched.waiting) == 1 and sched.waiting[0] is flood[-1]


def test_slots_spread_evenly_across_the_tenants_that_wait() -> None:
    # The flood holds 4 slots; quiet wants 4 adapters, other 1: holdings even out at 2, 1, 1
    # and stay there (no slot flips back and forth).
    sched = slot_scheduler()
    hold_every_slot(sched)
    for i in range(4):
        sched.add(make_seq(f"q{i}", 4, f"Q{i}", max_tokens=200, tenant="quiet"))
    sched.add(make_seq("o", 4, "O", max_tokens=200, tenant="other"))
    for _ in range(20):
        out = run_step(sched)
        held: dict[str, set[str]] = {}
        for s in out.scheduled:
            held.setdefault(s.seq.tenant, set()).add(s.seq.adapter)
    assert {tenant: len(adapters) for tenant, adapters in held.items()} == {
        "flood": 2,
        "quiet": 1,
        "other": 1,
    }


def test_requests_that_need_no_new_slot_are_never_held_behind_a_slot_wait() -> None:
    # Two slots (a third is pinned): x runs A, y runs D. x's request on B is past the guard's
    # bound; x holds no fewer slots than y, so x's own slot drains for it: x's later requests
    # on A wait, and so does any request needing a new slot (y's on C), but requests on the
    # base model (x's too), the pinned adapter, and y's on D get in at once. Before: the guard
    # stopped admission for everyone behind x's request, until a slot freed.
    sched = make_scheduler(max_loras=3, seqs=16, starvation_steps=3)
    sched.pinned = lambda: frozenset({"P"})
    sched.add(make_seq("x_a", 2, "A", max_tokens=3, tenant="x"))
    sched.add(make_seq("y_d", 2, "D", max_tokens=20, tenant="y"))
    run_step(sched)
    starving = make_seq("x_b", 2, "B", tenant="x")
    starving.adapter_skips = 3
    sched.add(starving)
    sched.add(make_seq("x_a2", 2, "A", tenant="x"))
    sched.add(make_seq("x_base", 2, None, tenant="x"))
    for rid, adapter in [("y_base", None), ("y_pinned", "P"), ("y_d2", "D"), ("y_c", "C")]:
        sched.add(make_seq(rid, 2, adapter, tenant="y"))
    out = run_step(sched)
    assert ids(out) == [
        "x_a", "y_d", "y_base", "y_pinned", "x_base", "y_d2"
    ]  # fmt: skip
    assert [s.request_id for s in sched.waiting] == ["x_b", "y_c", "x_a2"]
    assert chunks(run_step(sched))[:2] == [("x_a", 1), ("y_d", 1)]  # x_a's last token
    out = run_step(sched)  # x_a is done: its slot goes to x_b, nothing was preempted for it
    assert ("x_b", 2) in chunks(out) and not out.preempted
    assert {s.request_id for s in sched.waiting} == {"y_c", "x_a2"}  # both slots taken


def test_the_guard_takes_a_shared_adapters_slot_when_its_tenant_has_none_to_drain() -> None:
    # One slot (the other is pinned), held by A, which x and y both run: x cannot drain A
    # alone, so once past the bound its request on B takes A's slot, preempting both.
    sched = make_scheduler(max_loras=2, seqs=16, starvation_steps=3)
    sched.pinned = lambda: frozenset({"P"})
    sched.add(make_seq("x_a", 2, "A", max_tokens=20, tenant="x"))
    sched.add(make_seq("y_a", 2, "A", max_tokens=20, tenant="y"))
    run_step(sched)
    starving = make_seq("x_b", 2, "B", tenant="x")
    starving.adapter_skips = 3
    sched.add(starving)
    sched.add(make_seq("y_base", 2, None, tenant="y"))
    out = run_step(sched)
    assert {s.request_id for s in out.preempted} == {"x_a", "y_a"}
    assert {rid for rid, _ in chunks(out)} == {"x_b", "y_base"}


def test_random_multi_tenant_workloads_under_pressure_all_finish() -> None:
    # Three tenants, a few adapters, a cache and slots far too small for what they send:
    # every request finishes (no livelock between preempting tenants), within the budgets and
    # the bookkeeping invariants that run_step checks, the blocks per tenant included.
    for seed in range(8):
        rng = random.Random(seed)
        sched = make_scheduler(
            tokens=24, seqs=6, num_blocks=24, block_size=4, max_loras=2, max_model_len=48,
            starvation_steps=4,
        )  # fmt: skip
        seqs = []
        for step in range(3000):
            if step < 60:
                for _ in range(rng.randint(0, 2)):
                    adapter = rng.choice([None, "A", "B", "C", "D"])
                    tokens, tenant = rng.randint(1, 16), rng.choice("xyz")
                    seq = make_seq(f"r{len(seqs)}", rng.randint(1, 30), adapter, tokens)
                    seq.tenant = tenant
                    sched.add(seq)
                    seqs.append(seq)
            run_step(sched)
            if step >= 60 and not sched.has_unfinished():
                break
        assert all(seq.is_finished for seq in seqs), seed


def test_a_tenant_starving_its_own_request_does_not_hold_back_another_tenants_slot() -> None:
    # The flood holds every slot and has a request of its own past the guard's bound: its
    # slots drain for it, but the quiet tenant, holding none, still takes one at once.
    sched = slot_scheduler()
    hold_every_slot(sched)
    own = make_seq("f_new", 4, "F9", tenant="flood")
    own.adapter_skips = 40
    sched.add(own)
    sched.add(make_seq("q", 4, "Q", max_tokens=4, tenant="quiet"))
    out = run_step(sched)
    assert ("q", 4) in chunks(out) and [s.tenant for s in out.preempted] == ["flood"]
