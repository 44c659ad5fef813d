"""Scheduler: the distinct-adapter budget, the starvation guard, and admission over cached
prompt prefixes (prefix caching)."""

from __future__ import annotations

from scheduler_helpers import chunks, make_scheduler, make_seq, run_step

from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.scheduler import Scheduler, SchedulerOutput


def test_distinct_adapter_budget_skips_but_lets_resident_adapters_join() -> None:
    sched = make_scheduler(max_loras=2)
    specs = [("a1", "A"), ("b1", "B"), ("c1", "C"), ("a2", "A"), ("n1", None), ("n2", None)]
    for rid, adapter in specs:
        sched.add(make_seq(rid, 2, adapter, max_tokens=2))
    out = run_step(sched)
    assert [rid for rid, _ in chunks(out)] == ["a1", "b1", "a2", "n1", "n2"]
    assert [s.request_id for s in sched.waiting] == ["c1"]
    run_step(sched)  # A and B still decoding: C must wait
    assert [s.request_id for s in sched.waiting] == ["c1"]
    out = run_step(sched)
    assert chunks(out) == [("c1", 2)]


def test_base_model_requests_use_no_adapter_slot() -> None:
    sched = make_scheduler(max_loras=1)
    for rid, adapter in [("a", "A"), ("n1", None), ("b", "B"), ("n2", None)]:
        sched.add(make_seq(rid, 2, adapter))
    out = run_step(sched)
    assert [rid for rid, _ in chunks(out)] == ["a", "n1", "n2"]


def stream_until_scheduled(
    sched: Scheduler, target: str, steps: int
) -> tuple[int | None, list[SchedulerOutput]]:
    """Add one request for resident adapter "A" per step; return when ``target`` first runs."""
    outs = []
    for step in range(steps):
        sched.add(make_seq(f"a{step}", 2, "A", max_tokens=4))
        outs.append(run_step(sched))
        if any(s.seq.request_id == target for s in outs[-1].scheduled):
            return step, outs
    return None, outs


def test_without_the_guard_a_new_adapter_starves() -> None:
    sched = make_scheduler(max_loras=1, seqs=64, num_blocks=256, starvation_steps=10**9)
    sched.add(make_seq("a_first", 2, "A", max_tokens=4))
    sched.add(make_seq("b", 2, "B"))
    step, _ = stream_until_scheduled(sched, "b", steps=100)
    assert step is None


def test_starvation_guard_lets_a_new_adapter_in() -> None:
    sched = make_scheduler(max_loras=1, seqs=64, num_blocks=256, starvation_steps=5)
    sched.add(make_seq("a_first", 2, "A", max_tokens=4))
    sched.add(make_seq("b", 2, "B", max_tokens=2))
    step, outs = stream_until_scheduled(sched, "b", steps=100)
    # Steps 0-4 skip b five times and admit a0..a4. Step 5 is skip six (> 5): from then on
    # nothing is admitted; a4, the last A admitted, decodes through step 7, and b runs at 8.
    assert step == 8
    admitted = [[s.seq.request_id for s in o.scheduled if s.start == 0] for o in outs]
    assert admitted[:5] == [["a_first", "a0"], ["a1"], ["a2"], ["a3"], ["a4"]]
    assert admitted[5:] == [[], [], [], ["b"]]
    # b now fills the only slot: the A requests held back wait for it to finish, then resume.
    assert [s.request_id for s in sched.waiting][:3] == ["a5", "a6", "a7"]
    assert chunks(run_step(sched)) == [("b", 1)]
    assert [rid for rid, _ in chunks(run_step(sched))][:3] == ["a5", "a6", "a7"]


def test_a_prompt_sharing_a_computed_prefix_prefills_only_its_new_tokens() -> None:
    sched = make_scheduler(prefix_caching=True, tokens=64, block_size=4)
    first = make_seq("a", 10, max_tokens=2)
    sched.add(first)
    assert chunks(run_step(sched)) == [("a", 10)]
    shared = first.block_table[:2]
    second = make_seq("b", 10, max_tokens=2)  # same 10 prompt tokens: 2 full blocks cached
    sched.add(second)
    out = run_step(sched)
    assert chunks(out) == [("a", 1), ("b", 2)]
    assert out.scheduled[1].start == 8
    assert second.num_cached_tokens == 8
    assert second.block_table[:2] == shared
    while sched.has_unfinished():
        run_step(sched)
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks


def test_a_preempted_sequence_reuses_its_own_cached_blocks_on_readmission() -> None:
    sched = make_scheduler(
        prefix_caching=True, tokens=64, num_blocks=6, block_size=4, max_model_len=24
    )
    old = make_seq("old", 12, max_tokens=4)
    new = Sequence("new", list(range(100, 108)), SamplingParams(max_tokens=8))
    sched.add(old)
    run_step(sched)  # old: 3 blocks, 12 tokens computed
    sched.add(new)
    run_step(sched)  # old decodes into a 4th block, new takes 2: the pool is empty
    out = run_step(sched)  # old needs no block; new needs a 3rd: new preempts itself
    assert [s.request_id for s in out.preempted] == ["new"]
    assert new.num_cached_tokens == 0
    while sched.has_unfinished():
        run_step(sched)
    assert new.num_cached_tokens == 8  # its 2 full prompt blocks were still cached
