"""What is left of one step's budgets while the scheduler fills it (host-side, no torch)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from loraplex.engine.request.sequence import Sequence


@dataclass
class StepBudget:
    """Tokens, sequences and adapter slots left in one step; ``adapters`` are the distinct
    slot-holding adapters already in it, ``merged`` its one pre-merged adapter (if any)."""

    tokens: int
    seqs: int
    max_loras: int
    adapters: set[str] = field(default_factory=set)
    merged: str | None = None
    pinned: frozenset[str] = frozenset()  # always resident: their slots are taken already

    def exhausted(self) -> bool:
        return self.tokens <= 0 or self.seqs <= 0

    def costs_nothing(self, seq: Sequence) -> bool:
        """Admitting ``seq`` takes no new adapter slot: the base model, the step's pre-merged
        adapter (or the first one), a pinned adapter or one already in the step."""
        adapter = seq.adapter
        if adapter is None:
            return True
        if seq.merged:
            return self.merged in (None, adapter)
        return adapter in self.pinned or adapter in self.adapters

    def admits(self, seq: Sequence) -> bool:
        """Base-model requests use no slot; a step runs at most one pre-merged adapter."""
        if self.costs_nothing(seq):
            return True
        return not seq.merged and len(self.adapters) < self.max_loras - len(self.pinned)

    def uses_slot(self, seq: Sequence) -> bool:
        """``seq``'s adapter takes a slot of its own (not the base model, pre-merged or pinned)."""
        return seq.adapter is not None and not seq.merged and seq.adapter not in self.pinned

    def take(self, seq: Sequence, num_new_tokens: int) -> None:
        self.tokens -= num_new_tokens
        self.seqs -= 1
        if seq.merged:
            self.merged = seq.adapter
        elif seq.adapter is not None and seq.adapter not in self.pinned:
            self.adapters.add(seq.adapter)

    def give_back(self, seq: Sequence, num_new_tokens: int, others: Iterable[Sequence]) -> None:
        """Undo ``take`` for ``seq`` (preempted after it was scheduled); ``others``: the
        sequences still in the step, which may keep its adapter's slot (or merged weights)."""
        self.tokens += num_new_tokens
        self.seqs += 1
        if seq.adapter is None or any(
            o.adapter == seq.adapter and o.merged == seq.merged for o in others
        ):
            return
        if seq.merged:
            self.merged = None
        else:
            self.adapters.discard(seq.adapter)
