"""Scheduler: token/seq/block budgets, chunked prefill, preemption, abort, length limits.

Adapter budgets and prefix caching: test_scheduler_adapters_and_prefixes.py.
"""

from __future__ import annotations

import pytest
from scheduler_helpers import chunks, make_scheduler, make_seq, run_step

from loraplex.engine.request.sequence import SequenceStatus


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

    sched.finish(running, "abort")
    assert running.status is SequenceStatus.FINISHED and running.finish_reason == "abort"
    assert running.block_table == []
    assert sched.block_manager.num_free_blocks == 64
    sched.finish(waiting, "abort")
    assert waiting.finish_reason == "abort"
    sched.finish(waiting, "abort")  # finishing twice is harmless
    assert not sched.has_unfinished()
    assert sched.schedule().is_empty


def test_after_step_ignores_a_sequence_aborted_mid_step() -> None:
    sched = make_scheduler()
    seq = make_seq("a", 5)
    sched.add(seq)
    out = sched.schedule()
    sched.finish(seq, "abort")
    sched.after_step(out)
    assert seq.num_computed_tokens == 0


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


def test_finishing_from_the_middle_of_a_long_queue_keeps_the_order() -> None:
    """Aborts remove from anywhere in O(1) (a client with 64k sequences hanging up)."""
    sched = make_scheduler()
    seqs = [make_seq(str(i), 4) for i in range(2000)]
    for seq in seqs:
        sched.add(seq)
    for seq in seqs[1:-1:2]:
        sched.finish(seq, "abort")
    assert sched.num_waiting == 1001
    assert [s.request_id for s in sched.waiting][:3] == ["0", "2", "4"]
    assert sched.waiting[0] is seqs[0]
