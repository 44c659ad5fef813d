"""Scheduler: token/seq/block/adapter budgets, chunked prefill, preemption, starvation guard.

``run_step`` plays the engine: schedule, "run" the model, record the step, append one sampled
token per finished chunk, and finish sequences at ``max_tokens``. After every step it checks
the budgets and the block bookkeeping invariants.
"""

from __future__ import annotations

import pytest

from loraplex.config import SchedulerConfig
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.sampling_params import SamplingParams
from loraplex.engine.scheduler import Scheduler, SchedulerOutput
from loraplex.engine.sequence import Sequence, SequenceStatus


def make_seq(
    request_id: str,
    prompt_len: int,
    adapter: str | None = None,
    max_tokens: int = 16,
    arrival_time: float | None = None,
) -> Sequence:
    seq = Sequence(request_id, list(range(prompt_len)), SamplingParams(max_tokens), adapter)
    if arrival_time is not None:
        seq.arrival_time = arrival_time
    return seq


def make_scheduler(
    *,
    tokens: int = 64,
    seqs: int = 8,
    num_blocks: int = 64,
    block_size: int = 4,
    max_loras: int = 4,
    max_model_len: int = 64,
    starvation_steps: int = 32,
    prefix_caching: bool = False,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=tokens),
        BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching),
        max_loras=max_loras,
        max_model_len=max_model_len,
        starvation_steps=starvation_steps,
    )


def check_invariants(sched: Scheduler, out: SchedulerOutput) -> None:
    cfg, bm = sched.config, sched.block_manager
    assert sum(s.num_new_tokens for s in out.scheduled) <= cfg.max_num_batched_tokens
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len({s.seq.adapter for s in out.scheduled} - {None}) <= sched.max_loras
    assert all(s.num_new_tokens > 0 for s in out.scheduled)
    for seq in sched.waiting:
        assert seq.status is SequenceStatus.WAITING
        assert seq.block_table == []
    held = {b for seq in sched.running for b in seq.block_table}  # shared prefixes count once
    assert len(held) + bm.num_free_blocks == bm.num_blocks
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(set(seq.block_table)) == len(seq.block_table)
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens


def run_step(sched: Scheduler) -> SchedulerOutput:
    out = sched.schedule()
    sched.after_step(out)
    for s in out.scheduled:
        if s.sample:
            s.seq.append_token(7)
            if s.seq.num_output_tokens >= s.seq.params.max_tokens:
                sched.finish(s.seq, "length")
    check_invariants(sched, out)
    return out


def chunks(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled]


def test_chunked_prefill_spans_several_steps() -> None:
    sched = make_scheduler(tokens=8)
    seq = make_seq("a", 20, max_tokens=2)
    sched.add(seq)
    outs = [run_step(sched) for _ in range(4)]
    assert [chunks(o) for o in outs] == [[("a", 8)], [("a", 8)], [("a", 4)], [("a", 1)]]
    assert [o.scheduled[0].start for o in outs] == [0, 8, 16, 20]
    # Only the chunk that reaches the last token samples.
    assert [o.scheduled[0].sample for o in outs] == [False, False, True, True]
    assert seq.is_finished and seq.num_output_tokens == 2
    assert not sched.has_unfinished()
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks


def test_decode_and_prefill_chunk_share_one_step() -> None:
    sched = make_scheduler(tokens=8)
    a, b = make_seq("a", 4), make_seq("b", 20)
    sched.add(a)
    assert chunks(run_step(sched)) == [("a", 4)]
    sched.add(b)
    out = run_step(sched)
    assert chunks(out) == [("a", 1), ("b", 7)]
    assert [s.sample for s in out.scheduled] == [True, False]
    assert b.status is SequenceStatus.RUNNING
    assert chunks(run_step(sched)) == [("a", 1), ("b", 7)]


def test_decodes_go_before_an_older_running_prefill() -> None:
    sched = make_scheduler(tokens=4)
    decode = make_seq("d", 2, arrival_time=1.0)
    prefill = make_seq("p", 30, arrival_time=0.0)
    sched.add(decode)
    sched.add(prefill)
    assert chunks(run_step(sched)) == [("d", 2), ("p", 2)]
    # The older prefill would take the whole budget if it went first.
    assert chunks(run_step(sched)) == [("d", 1), ("p", 3)]


def test_max_num_seqs_caps_the_batch() -> None:
    sched = make_scheduler(seqs=2)
    seqs = [make_seq(f"r{i}", 3, max_tokens=1) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    assert chunks(run_step(sched)) == [("r0", 3), ("r1", 3)]
    assert sched.num_waiting == 1 and seqs[2].status is SequenceStatus.WAITING
    assert chunks(run_step(sched)) == [("r2", 3)]
    assert not sched.has_unfinished()


def test_token_budget_holds_back_waiting_requests() -> None:
    sched = make_scheduler(tokens=6)
    for i in range(3):
        sched.add(make_seq(f"r{i}", 4, max_tokens=3))
    assert chunks(run_step(sched)) == [("r0", 4), ("r1", 2)]
    assert sched.num_running == 2 and sched.num_waiting == 1
    assert chunks(run_step(sched)) == [("r0", 1), ("r1", 2), ("r2", 3)]


def test_preemption_frees_the_latest_arrival_which_later_recomputes() -> None:
    # 4 blocks of 4 tokens: two 8-token prompts fill the cache.
    sched = make_scheduler(num_blocks=4, block_size=4, max_model_len=16)
    a = make_seq("a", 8, max_tokens=3)
    b = make_seq("b", 8, max_tokens=2)
    sched.add(a)
    sched.add(b)
    assert chunks(run_step(sched)) == [("a", 8), ("b", 8)]
    assert sched.block_manager.num_free_blocks == 0

    out = run_step(sched)  # a's 9th token needs a third block
    assert chunks(out) == [("a", 1)]
    assert out.preempted == [b]
    assert b.status is SequenceStatus.WAITING
    assert (b.num_computed_tokens, b.block_table) == (0, [])
    assert b.output_token_ids == [7]  # generated tokens survive preemption
    assert sched.waiting[0] is b

    assert chunks(run_step(sched)) == [("a", 1)]  # b still doesn't fit; a finishes
    assert a.is_finished and a.finish_reason == "length"

    out = run_step(sched)  # b recomputes prompt and its output token, then samples
    assert chunks(out) == [("b", 9)]
    assert out.scheduled[0].start == 0 and out.scheduled[0].sample
    assert b.is_finished and b.num_output_tokens == 2


def test_preemption_picks_the_latest_arrival_not_the_next_in_line() -> None:
    sched = make_scheduler(num_blocks=6, block_size=2, max_model_len=12)
    a, b, c = (make_seq(rid, 4) for rid in "abc")
    for seq in (a, b, c):
        sched.add(seq)
    run_step(sched)  # 6 blocks full; each decode now needs a fresh block
    out = run_step(sched)
    assert out.preempted == [c]
    assert chunks(out) == [("a", 1), ("b", 1)]


def test_a_newer_decode_preempts_itself_rather_than_an_older_prefill() -> None:
    sched = make_scheduler(tokens=8, num_blocks=4, block_size=2, max_model_len=8)
    decode = make_seq("d", 2, arrival_time=2.0)
    prefill = make_seq("p", 8, max_tokens=1, arrival_time=0.0)
    sched.add(decode)
    sched.add(prefill)
    assert chunks(run_step(sched)) == [("d", 2), ("p", 6)]  # all 4 blocks in use
    out = run_step(sched)
    assert out.preempted == [decode]
    assert chunks(out) == [("p", 2)]  # uses the block d gave back
    assert prefill.is_finished
    assert chunks(run_step(sched)) == [("d", 3)]  # d recomputes prompt + its sampled token


def test_a_sequence_preempts_itself_when_it_is_the_only_candidate() -> None:
    sched = make_scheduler(tokens=4, num_blocks=4, block_size=2, max_model_len=8)
    decode = make_seq("d", 2, max_tokens=2, arrival_time=1.0)
    prefill = make_seq("p", 8, max_tokens=1, arrival_time=0.0)
    sched.add(decode)
    sched.add(prefill)
    assert chunks(run_step(sched)) == [("d", 2), ("p", 2)]
    out = run_step(sched)  # d takes the second-to-last block; p's chunk needs two
    assert chunks(out) == [("d", 1)]
    assert out.preempted == [prefill]
    assert sched.waiting[0] is prefill and prefill.num_computed_tokens == 0
    assert decode.is_finished
    outs = [run_step(sched) for _ in range(2)]
    assert [chunks(o) for o in outs] == [[("p", 4)], [("p", 4)]]
    assert prefill.is_finished and not sched.has_unfinished()


def test_abort_frees_blocks_of_running_and_drops_waiting() -> None:
    sched = make_scheduler(tokens=8)
    running, waiting = make_seq("run", 8), make_seq("wait", 8)
    sched.add(running)
    sched.add(waiting)
    run_step(sched)
    assert running.block_table and sched.block_manager.num_free_blocks < 64

    assert sched.abort("run") is running
    assert running.status is SequenceStatus.FINISHED and running.finish_reason == "abort"
    assert running.block_table == []
    assert sched.block_manager.num_free_blocks == 64
    assert sched.abort("wait") is waiting and waiting.finish_reason == "abort"
    assert sched.abort("nope") is None
    assert not sched.has_unfinished()
    assert sched.schedule().is_empty


def test_after_step_ignores_a_sequence_aborted_mid_step() -> None:
    sched = make_scheduler()
    seq = make_seq("a", 5)
    sched.add(seq)
    out = sched.schedule()
    sched.abort("a")
    sched.after_step(out)
    assert seq.num_computed_tokens == 0


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


def test_add_rejects_prompts_longer_than_max_model_len() -> None:
    sched = make_scheduler(max_model_len=16)
    with pytest.raises(ValueError, match="max_model_len"):
        sched.add(make_seq("long", 17))
    with pytest.raises(ValueError):
        sched.add(make_seq("empty", 0))
    sched.add(make_seq("fits", 16))
    assert sched.num_waiting == 1


def test_kv_cache_must_hold_one_max_length_sequence() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        make_scheduler(num_blocks=3, block_size=4, max_model_len=13)


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
