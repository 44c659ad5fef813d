"""What one ``Scheduler.schedule()`` call hands the engine: the step's chunks and the sequences
it preempted (host-side, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplex.engine.request.sequence import Sequence


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

    def withdraw(self, seq: Sequence) -> ScheduledSeq | None:
        """Take ``seq``'s chunk back out of the step (it was preempted after being scheduled);
        the chunk, or None if the step had none for it."""
        for index, scheduled in enumerate(self.scheduled):
            if scheduled.seq is seq:
                return self.scheduled.pop(index)
        return None
