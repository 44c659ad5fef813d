"""The scheduler's per-adapter counts behind ``vllm:lora_requests_info``: running = adapters
with a running sequence, waiting = adapters with queued sequences only (vLLM lists the same
set twice). ``check_invariants`` (every scheduler test) also recounts them from the queues."""

from __future__ import annotations

from scheduler_helpers import make_scheduler, make_seq, run_step

from loraplex.engine.request.sequence import SequenceStatus


def test_running_and_waiting_adapters_are_disjoint() -> None:
    sched = make_scheduler(max_loras=1)
    a1, a2, b = make_seq("a1", 4, "a"), make_seq("a2", 4, "a"), make_seq("b", 4, "b")
    for seq in (a1, a2, b):
        sched.add(seq)
    assert sched.adapter_counts.snapshot() == ([], ["a", "b"])
    run_step(sched)  # one adapter slot per step: a runs, b waits
    assert sched.adapter_counts.snapshot() == (["a"], ["b"])
    sched.add(make_seq("a3", 4, "a"))  # a queued request of a running adapter: not "waiting"
    assert sched.adapter_counts.snapshot() == (["a"], ["b"])
    for seq in list(sched.running):
        sched.finish(seq, "abort")
    assert sched.adapter_counts.snapshot() == ([], ["a", "b"])
    sched.finish(b, "abort")  # a waiting sequence leaves the count too
    assert sched.adapter_counts.snapshot() == ([], ["a"])


def test_preemption_moves_a_sequence_back_to_waiting() -> None:
    # 8 blocks of 4 tokens: two 12-token prompts growing to 20 tokens cannot both stay.
    sched = make_scheduler(num_blocks=8, block_size=4, max_model_len=32)
    first, second = make_seq("x", 12, "x", max_tokens=16), make_seq("y", 12, "y", max_tokens=16)
    sched.add(first)
    sched.add(second)
    preempted = []
    for _ in range(12):
        out = run_step(sched)  # checks the invariants, the counts included
        preempted += out.preempted
        if preempted:
            break
    assert preempted, "the KV cache never filled"
    victim = preempted[0]
    assert victim.status is SequenceStatus.WAITING
    running, waiting = sched.adapter_counts.snapshot()
    assert victim.adapter in waiting and victim.adapter not in running
