"""Helpers for the scheduler tests: sequences, a scheduler over a block manager, and
``run_step``, which plays the engine: schedule, "run" the model, record the step, append one
sampled token per finished chunk, finish sequences at ``max_tokens``, then check the budgets
and the block bookkeeping invariants.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from loraplex.config import SchedulerConfig
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence, SequenceStatus
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.scheduler import Scheduler, SchedulerOutput


def make_seq(
    request_id: str,
    prompt_len: int,
    adapter: str | None = None,
    max_tokens: int = 16,
    arrival_time: float | None = None,
    tenant: str | None = None,
) -> Sequence:
    seq = Sequence(request_id, list(range(prompt_len)), SamplingParams(max_tokens), adapter)
    if arrival_time is not None:
        seq.arrival_time = arrival_time
    if tenant is not None:
        seq.tenant = tenant
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
    affinity: bool = False,
    max_skips: int = SchedulerConfig.adapter_affinity_max_skips,
    is_resident: Callable[[str], bool] = lambda adapter: False,
) -> Scheduler:
    """A scheduler in the fair (arrival) order unless ``affinity``."""
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=seqs,
            max_num_batched_tokens=tokens,
            adapter_affinity=affinity,
            adapter_affinity_max_skips=max_skips,
        ),
        BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching),
        max_loras=max_loras,
        max_model_len=max_model_len,
        starvation_steps=starvation_steps,
        is_resident=is_resident,
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
    running = sorted({seq.adapter for seq in sched.running} - {None})
    waiting = sorted({seq.adapter for seq in sched.waiting} - {None} - set(running))
    assert sched.adapter_counts.snapshot() == (running, waiting)  # kept in step with each move
    held = {b for seq in sched.running for b in seq.block_table}  # shared prefixes count once
    assert len(held) + bm.num_free_blocks == bm.num_blocks
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert len(set(seq.block_table)) == len(seq.block_table)
        assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens


def check_shares(sched: Scheduler) -> None:
    """The blocks per tenant that fair_share.BlockShares kept through the step (if it counted
    them) are those in the running sequences' tables."""
    usage = sched._shares._usage
    if usage is not None:
        held = Counter[str]()
        for seq in sched.running:
            held[seq.tenant] += len(seq.block_table)
        assert +usage == +held


def run_step(sched: Scheduler) -> SchedulerOutput:
    out = sched.schedule()
    check_shares(sched)
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
