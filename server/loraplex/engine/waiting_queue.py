"""The scheduler's FCFS waiting queue, with O(1) removal from anywhere in it.

A client that hangs up, or a request of 64k sequences being aborted, removes sequences from
the middle of the queue; a deque would scan for each (O(N²) for N aborts). An insertion-ordered
dict keyed by ``seq_id`` keeps the order and removes in O(1); ``appendleft`` (preemption puts a
sequence back at the front) is ``move_to_end(last=False)``. Host-side only, no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from loraplex.engine.sequence import Sequence


class WaitingQueue:
    """Sequences in arrival order (preempted ones at the front)."""

    def __init__(self) -> None:
        self._seqs: OrderedDict[int, Sequence] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seqs)

    def __bool__(self) -> bool:
        return bool(self._seqs)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(list(self._seqs.values()))  # a snapshot: callers remove while iterating

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._seqs

    def __getitem__(self, index: int) -> Sequence:
        """Only the front (0) is cheap; it is what tests and the scheduler look at."""
        if index != 0:
            return list(self._seqs.values())[index]
        return next(iter(self._seqs.values()))

    def append(self, seq: Sequence) -> None:
        self._seqs[seq.seq_id] = seq

    def appendleft(self, seq: Sequence) -> None:
        self._seqs[seq.seq_id] = seq
        self._seqs.move_to_end(seq.seq_id, last=False)

    def remove(self, seq: Sequence) -> None:
        del self._seqs[seq.seq_id]

    def discard(self, seq: Sequence) -> bool:
        """Remove ``seq`` if queued; whether it was."""
        return self._seqs.pop(seq.seq_id, None) is not None
