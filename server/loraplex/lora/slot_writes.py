"""Which slot writes are still in flight, and what each one must keep alive (no torch).

A write is a fence (``done()``: has it completed; ``hold_compute()``: make the compute stream
wait for it) plus the host objects it reads. This module is the bookkeeping behind the slot
copier's rules: a step reading a slot is held behind that slot's unfinished writes, once each;
a write's host objects are released only after its fence reports done, never before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class _Fence(Protocol):
    def done(self) -> bool: ...

    def hold_compute(self) -> None: ...


F = TypeVar("F", bound=_Fence)


@dataclass
class _Write(Generic[F]):
    fence: F
    keepalive: object  # the host tensors the write reads: referenced until it is done
    ordered: bool = False  # the compute stream already waits for it (a stream runs in order)


class SlotWrites(Generic[F]):
    """slot -> its unfinished writes, oldest first (a slot rewritten before its previous write
    finished has two, and both keep their host objects)."""

    def __init__(self) -> None:
        self._pending: dict[int, list[_Write[F]]] = {}

    def add(self, slot: int, fence: F, keepalive: object) -> None:
        """Record a write of ``slot`` just issued (one already done is not kept); writes
        finished meanwhile release their host objects, so a burst of loads holds few."""
        self.reap()
        if not fence.done():
            self._pending.setdefault(slot, []).append(_Write(fence, keepalive))

    def wait_for(self, slots: Iterable[int]) -> int:
        """Order the compute stream after every unfinished write of ``slots`` not yet waited
        for; release what finished writes held. Returns the number of waits issued."""
        self.reap()
        waits = 0
        for slot in set(slots):
            for write in self._pending.get(slot, ()):
                if not write.ordered:
                    write.fence.hold_compute()
                    write.ordered = True
                    waits += 1
        return waits

    def in_flight(self, slot: int) -> bool:
        """Whether a write of ``slot`` has not completed yet."""
        return any(not write.fence.done() for write in self._pending.get(slot, ()))

    def held(self) -> list[object]:
        """The host objects still held by unfinished writes (oldest first per slot)."""
        self.reap()
        return [write.keepalive for writes in self._pending.values() for write in writes]

    def reap(self) -> None:
        """Forget the writes that completed, releasing their host objects."""
        for slot in list(self._pending):
            left = [write for write in self._pending[slot] if not write.fence.done()]
            if left:
                self._pending[slot] = left
            else:
                del self._pending[slot]
