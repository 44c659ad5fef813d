"""Continuous batching with chunked prefill (host-side bookkeeping, no torch).

Each ``schedule()`` call picks the work of one forward pass (a "step"): decodes and prefill
chunks mixed under one token budget. The engine loop is::

    out = scheduler.schedule()
    ...run the model on out.scheduled...
    scheduler.after_step(out)            # the KV cache now holds the fed tokens
    ...append a sampled token to every s.seq with s.sample; finish() the ones that stop...
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from loraplex.config import SchedulerConfig
from loraplex.engine.request.sequence import Sequence, SequenceStatus
from loraplex.engine.sched.adapter_counts import AdapterCounts
from loraplex.engine.sched.affinity import admission_tier, overtaken
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.step_budget import StepBudget
from loraplex.engine.sched.waiting_queue import WaitingQueue


def _arrival(seq: Sequence) -> tuple[float, int]:
    # seq_id breaks ties between requests created within one clock tick.
    return (seq.arrival_time, seq.seq_id)


@dataclass
class ScheduledSeq:
    """Feed ``seq.token_ids[start : start + num_new_tokens]`` this step.

    ``start`` and ``sample`` are snapshots taken when scheduled, so they stay valid after
    ``after_step`` advances ``num_computed_tokens`` and the engine appends the sampled token.
    """

    seq: Sequence
    num_new_tokens: int
    start: int = field(init=False)
    _sample: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.start = self.seq.num_computed_tokens
        self._sample = self.start + self.num_new_tokens == self.seq.num_tokens

    @property
    def sample(self) -> bool:
        """True when this chunk reaches the last token, so the step samples one for ``seq``."""
        return self._sample


@dataclass
class SchedulerOutput:
    """One step's work, plus the sequences preempted (moved back to waiting) to make room."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    def adapter_keys(self) -> set[str]:
        """The step's adapters that need a device slot (pre-merged ones need none)."""
        return {s.seq.adapter for s in self.scheduled if s.seq.adapter and not s.seq.merged}


class Scheduler:
    """Waiting queue (FCFS) and running set of unfinished sequences.

    Invariants: every unfinished sequence is in exactly one of ``waiting`` (status WAITING, no
    blocks) or ``running`` (status RUNNING, owns the blocks for its computed tokens); a step
    never holds more than ``max_loras`` distinct non-None adapters, nor more than the
    configured tokens and sequences. The engine finishes sequences that reach
    ``max_model_len``; the scheduler only refuses prompts that are already longer.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        max_loras: int,
        max_model_len: int,
        starvation_steps: int = 32,
        is_ready: Callable[[Sequence], bool] = lambda seq: True,
        pinned: Callable[[], frozenset[str]] = frozenset,
        is_resident: Callable[[str], bool] = lambda adapter: False,
    ) -> None:
        if max_loras <= 0 or max_model_len <= 0 or starvation_steps < 0:
            raise ValueError("max_loras and max_model_len must be positive, starvation_steps >= 0")
        # A lone sequence must always fit, or it would preempt itself forever.
        if max_model_len > block_manager.num_blocks * block_manager.block_size:
            raise ValueError("the KV cache cannot hold one sequence of max_model_len tokens")
        self.config = config
        self.block_manager = block_manager
        self.max_loras = max_loras
        self.max_model_len = max_model_len
        self.starvation_steps = starvation_steps
        # False while a waiting request's adapter is still on its way to host memory.
        self.is_ready = is_ready
        self.pinned = pinned
        # Whether an adapter is in a device slot now (no load to run it): affinity's RESIDENT.
        self.is_resident = is_resident
        self.waiting = WaitingQueue()
        self.running: list[Sequence] = []
        self.adapter_counts = AdapterCounts()  # sequences per adapter and status, for metrics

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        if not 0 < seq.num_prompt_tokens <= self.max_model_len:
            raise ValueError(
                f"prompt of {seq.num_prompt_tokens} tokens is empty or longer than "
                f"max_model_len={self.max_model_len}"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self.adapter_counts.enter(seq, SequenceStatus.WAITING)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark ``seq`` FINISHED, free its blocks and drop it from the queues."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)  # at most max_num_seqs long
            self.adapter_counts.leave(seq, SequenceStatus.RUNNING)
        elif seq.status is SequenceStatus.WAITING and self.waiting.discard(seq):  # O(1)
            self.adapter_counts.leave(seq, SequenceStatus.WAITING)
        seq.adapter_skips = 0
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def schedule(self) -> SchedulerOutput:
        """Pick this step's work.

        Running sequences first: decodes, then prefill chunks, each group in arrival order; one
        whose chunk lacks blocks preempts the latest arrival not yet scheduled (maybe itself).
        Then, unless something was preempted, waiting ones in the queue's fair order (with
        ``adapter_affinity``, each tenant's cheapest first: see ``engine/sched/affinity.py``) with
        prefills chunked to the token budget. A request whose adapter does not fit the step is
        skipped, but once skipped more than ``starvation_steps`` times it blocks everyone
        behind it until it gets in.
        """
        cfg = self.config
        budget = StepBudget(
            cfg.max_num_batched_tokens, cfg.max_num_seqs, self.max_loras, pinned=self.pinned()
        )
        out = SchedulerOutput()
        self._schedule_running(budget, out)
        # Admitting now would hand the blocks just freed by preemption straight back out.
        if not out.preempted:
            self._schedule_waiting(budget, out)
        return out

    def after_step(self, out: SchedulerOutput) -> None:
        """Record that the step's chunks are now in the KV cache (and publish full blocks);
        under a sliding window, free the blocks that left it."""
        for s in out.scheduled:
            if not s.seq.is_finished:  # aborted while the step ran
                s.seq.num_computed_tokens += s.num_new_tokens
                self.block_manager.publish(s.seq, s.start, s.num_new_tokens)
                self.block_manager.free_out_of_window(s.seq)

    def _schedule_running(self, budget: StepBudget, out: SchedulerOutput) -> None:
        # Decodes (one token each) go before prefill chunks so a long prompt cannot stall them.
        order = sorted(self.running, key=lambda s: (s.num_uncomputed_tokens > 1, _arrival(s)))
        queue = deque(order)
        while queue and not budget.exhausted():
            seq = queue.popleft()
            num_new = min(seq.num_uncomputed_tokens, budget.tokens)
            if num_new == 0 or not budget.admits(seq):
                continue
            if self._make_room(seq, num_new, queue, out):
                self._take(seq, num_new, budget, out)

    def _make_room(
        self, seq: Sequence, num_new: int, queue: deque[Sequence], out: SchedulerOutput
    ) -> bool:
        """Preempt the latest arrivals among ``seq`` and the not-yet-scheduled ``queue`` until
        ``seq``'s chunk fits. Returns False when ``seq`` itself had to go."""
        while not self.block_manager.can_allocate(seq, num_new):
            victim = max([*queue, seq], key=_arrival)
            if victim is not seq:
                queue.remove(victim)
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        """Preemption by recompute: drop the KV cache, requeue at the front of waiting."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.adapter_counts.move(seq, SequenceStatus.RUNNING, SequenceStatus.WAITING)

    def _schedule_waiting(self, budget: StepBudget, out: SchedulerOutput) -> None:
        tier = None
        if self.config.adapter_affinity:
            tier = partial(
                admission_tier,
                budget=budget,
                is_resident=self.is_resident,
                # At most the guard's bound: one more skip would trip the guard.
                max_skips=min(self.config.adapter_affinity_max_skips, self.starvation_steps),
            )
        order = self.waiting.ordered(tier)
        admitted: list[Sequence] = []
        skipped: set[int] = set()
        for seq in order:
            if budget.exhausted():
                break
            if not self.is_ready(seq):
                continue
            if not budget.admits(seq):
                seq.adapter_skips += 1
                skipped.add(seq.seq_id)
                # Starvation guard: once a request has waited too long for an adapter slot,
                # nobody behind it gets in, so running sequences drain and free a slot for it.
                if seq.adapter_skips > self.starvation_steps:
                    break
                continue
            # Leading blocks already in the prefix cache are shared, not recomputed.
            cached = self.block_manager.cached_prefix(seq)
            uncomputed = seq.num_tokens - len(cached) * self.block_manager.block_size
            num_new = min(uncomputed, budget.tokens)
            # FCFS on memory: later (maybe smaller) requests don't overtake one that can't fit.
            if not self.block_manager.can_admit(seq, cached, num_new):
                break
            admitted.append(seq)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            self.block_manager.admit(seq, cached, num_new)
            self._record(seq, num_new, budget, out)
        if self.config.adapter_affinity:  # the bound: passing over counts as a skip too
            for seq in overtaken(order, admitted, self.is_ready):
                if seq.seq_id not in skipped:
                    seq.adapter_skips += 1
        for seq in admitted:
            self.waiting.remove(seq)
            self.running.append(seq)
            self.adapter_counts.move(seq, SequenceStatus.WAITING, SequenceStatus.RUNNING)
            seq.adapter_skips = 0

    def _take(self, seq: Sequence, num_new: int, budget: StepBudget, out: SchedulerOutput) -> None:
        self.block_manager.allocate(seq, num_new)
        self._record(seq, num_new, budget, out)

    @staticmethod
    def _record(seq: Sequence, num_new: int, budget: StepBudget, out: SchedulerOutput) -> None:
        out.scheduled.append(ScheduledSeq(seq, num_new))
        budget.take(seq, num_new)
