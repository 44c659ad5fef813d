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

from loraplex.config import SchedulerConfig
from loraplex.engine.request.sequence import Sequence, SequenceStatus
from loraplex.engine.sched.adapter_counts import AdapterCounts
from loraplex.engine.sched.affinity import overtaken, step_order
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.fair_share import BlockShares, SlotHolders
from loraplex.engine.sched.scheduler_output import ScheduledSeq, SchedulerOutput
from loraplex.engine.sched.step_budget import StepBudget
from loraplex.engine.sched.waiting_queue import WaitingQueue

__all__ = ["ScheduledSeq", "Scheduler", "SchedulerOutput"]


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
        # Per step (engine/sched/fair_share.py): blocks per tenant, and who holds the step's slots.
        self._shares = BlockShares(self.running, frozenset, block_manager.num_blocks)
        self._holders: SlotHolders | None = None
        self._barred: set[str] = set()  # tenants preempted for blocks in this step

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
        whose chunk lacks blocks preempts a sequence (maybe itself). Then waiting ones, in the
        queue's fair order (with ``adapter_affinity``, each tenant's cheapest first: see
        ``engine/sched/affinity.py``), with prefills chunked to the token budget. Where blocks or
        adapter slots are short, tenants get fair shares of them (``engine/sched/fair_share.py``):
        with one tenant, the victim is the latest arrival not yet scheduled, nothing is admitted
        after a preemption, a request that does not fit stops admission behind it, and one
        whose adapter has not fitted in more than ``starvation_steps`` steps holds back those
        behind it that would take or keep a slot.
        """
        cfg = self.config
        budget = StepBudget(
            cfg.max_num_batched_tokens, cfg.max_num_seqs, self.max_loras, pinned=self.pinned()
        )
        self._shares = BlockShares(
            self.running, self.waiting.active_tenants, self.block_manager.num_blocks
        )
        self._barred = set()
        out = SchedulerOutput()
        self._schedule_running(budget, out)
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
        order = sorted(self.running, key=lambda s: (s.num_uncomputed_tokens > 1, s.arrival_key))
        queue = deque(order)
        while queue and not budget.exhausted():
            seq = queue.popleft()
            num_new = min(seq.num_uncomputed_tokens, budget.tokens)
            if num_new == 0 or not budget.admits(seq):
                continue
            if self._make_room(seq, num_new, queue, budget, out):
                blocks = len(seq.block_table)
                self.block_manager.allocate(seq, num_new)
                if len(seq.block_table) > blocks:  # most decodes take no new block
                    self._shares.charge(seq.tenant, len(seq.block_table) - blocks)
                self._record(seq, num_new, budget, out)

    def _make_room(
        self,
        seq: Sequence,
        num_new: int,
        queue: deque[Sequence],
        budget: StepBudget,
        out: SchedulerOutput,
    ) -> bool:
        """Preempt until ``seq``'s chunk fits: among ``seq``, the not-yet-scheduled ``queue``
        and, if its tenant is under its share, the scheduled sequences of tenants over theirs,
        the furthest over first, latest arrival first. False when ``seq`` itself had to go."""
        while not self.block_manager.can_allocate(seq, num_new):
            scheduled = (s.seq for s in out.scheduled)
            victim = self._shares.victim(seq, [*queue, *self._shares.over_for(seq, scheduled)])
            if victim is not seq and victim in queue:
                queue.remove(victim)
            self._evict(victim, budget, out)
            if victim is seq:
                return False
        return True

    def _evict(
        self, seq: Sequence, budget: StepBudget, out: SchedulerOutput, for_blocks: bool = True
    ) -> None:
        """Preempt the running ``seq``, withdrawing its chunk if the step scheduled one; if
        ``for_blocks``, its tenant is admitted no more in this step."""
        if for_blocks:
            self._barred.add(seq.tenant)
        withdrawn = out.withdraw(seq)
        if withdrawn is not None:
            budget.give_back(seq, withdrawn.num_new_tokens, (s.seq for s in out.scheduled))
        self._preempt(seq)
        out.preempted.append(seq)
        self._holders = None  # the step's slots changed

    def _preempt(self, seq: Sequence) -> None:
        """Preemption by recompute: drop the KV cache, requeue at the front of waiting."""
        self.running.remove(seq)
        self._shares.charge(seq.tenant, -len(seq.block_table))
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.adapter_counts.move(seq, SequenceStatus.RUNNING, SequenceStatus.WAITING)

    def _schedule_waiting(self, budget: StepBudget, out: SchedulerOutput) -> None:
        tier = step_order(self.config, budget, self.is_resident, self.starvation_steps)
        order = self.waiting.ordered(tier)
        admitted: list[Sequence] = []
        skipped: set[int] = set()
        shares, self._holders = self._shares, None
        under_only = False
        draining: set[str] = set()  # the tenants of the guard's requests (fair_share.py)
        for seq in order:
            if budget.exhausted():
                break
            # Blocks just taken from a tenant must not go straight back to it.
            if not self.is_ready(seq) or seq.tenant in self._barred:
                continue
            # Blocks short (one did not fit, or some were taken back): under-share tenants only.
            if (under_only or self._barred) and not shares.under(seq.tenant):
                continue
            if not budget.costs_nothing(seq):
                # While the guard drains a slot, others get one only by taking it (balance).
                if (draining or not budget.admits(seq)) and not self._claim_slot(seq, budget, out):
                    seq.adapter_skips += 1
                    skipped.add(seq.seq_id)
                    if seq.adapter_skips > self.starvation_steps:
                        draining.add(seq.tenant)
                    continue
                self._holders = None
            elif seq.tenant in draining and budget.uses_slot(seq):
                continue  # its tenant's slots drain for the guard's request
            # Leading blocks already in the prefix cache are shared, not recomputed.
            cached = self.block_manager.cached_prefix(seq)
            uncomputed = seq.num_tokens - len(cached) * self.block_manager.block_size
            num_new = min(uncomputed, budget.tokens)
            if not self.block_manager.can_admit(seq, cached, num_new):
                if not shares.under(seq.tenant):  # at or over its share: it holds nobody back
                    under_only = True
                    continue
                # FCFS on memory: later (maybe smaller) requests don't overtake one that can't
                # fit, unless preempting tenants over their share makes room for it.
                if not self._reclaim(seq, cached, num_new, budget, out):
                    break
            admitted.append(seq)
            seq.status = SequenceStatus.RUNNING
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            self.block_manager.admit(seq, cached, num_new)
            shares.admit(seq)
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

    def _claim_slot(self, seq: Sequence, budget: StepBudget, out: SchedulerOutput) -> bool:
        """Preempt the running sequences of one adapter so that ``seq`` gets a slot, where
        the balance rule or the starvation guard allows (``engine/sched/fair_share.py``)."""
        if self._holders is None:
            running = {s.seq_id for s in self.running}
            self._holders = SlotHolders(
                (s.seq for s in out.scheduled),
                budget.pinned,
                lambda s: s.seq_id in running,
                self.starvation_steps,
            )
        victims = self._holders.victims(seq)
        for victim in victims:
            self._evict(victim, budget, out, for_blocks=False)
        return bool(victims) and budget.admits(seq)

    def _reclaim(
        self,
        seq: Sequence,
        cached: list[int],
        num_new: int,
        budget: StepBudget,
        out: SchedulerOutput,
    ) -> bool:
        """Preempt running sequences of tenants over their share until the waiting ``seq``
        fits, if its tenant may reclaim (``engine/sched/fair_share.py``); whether it fits now."""
        size = self.block_manager.block_size
        blocks = -(-seq.num_tokens // size)  # its whole prompt (and output, if preempted)
        if not self._shares.may_reclaim(seq.tenant, blocks):
            return False
        while not self.block_manager.can_admit(seq, cached, num_new):
            victim = self._shares.reclaim_victim(seq)
            if victim is None:
                return False
            self._evict(victim, budget, out)
        return True

    @staticmethod
    def _record(seq: Sequence, num_new: int, budget: StepBudget, out: SchedulerOutput) -> None:
        out.scheduled.append(ScheduledSeq(seq, num_new))
        budget.take(seq, num_new)
