"""Which adapter occupies which slot of the preallocated device LoRA tables (no torch).

The engine keeps ``num_slots`` rows of LoRA weights on the device. This cache only does the
bookkeeping: it maps adapter keys to slot indices, evicts least-recently-used keys, and tells
the caller which slots it must (re)fill with weights. Keys are opaque strings; the engine uses
``"name@sha"`` so that a replaced adapter never aliases the old weights.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable


class SlotCache:
    """LRU map from adapter key to slot index, with pinning.

    Invariants: each slot index in ``0 .. num_slots - 1`` is either free or held by exactly one
    resident key; ``_resident`` is ordered least- to most-recently used.

    Pinning only *marks* a key; it never loads one, since loading needs weights only the caller
    has (``acquire`` reports the slot to fill). A pinned key may be pinned before it is resident
    and stays pinned across residency; while resident, ``acquire`` never evicts it. Pinned
    resident keys still occupy slots, so pinning every slot makes new keys unacquirable.
    ``evict`` is explicit (adapter deleted or replaced) and drops the pin too.
    """

    def __init__(self, num_slots: int) -> None:
        if num_slots <= 0:
            raise ValueError("num_slots must be positive")
        self.num_slots = num_slots
        self._resident: OrderedDict[str, int] = OrderedDict()
        self._free: deque[int] = deque(range(num_slots))
        self._pinned: set[str] = set()

    def lookup(self, key: str) -> int | None:
        """Slot of ``key`` if resident, else None. A query: does not touch LRU order."""
        return self._resident.get(key)

    def resident(self) -> dict[str, int]:
        """Copy of key -> slot, least-recently used first."""
        return dict(self._resident)

    def is_pinned(self, key: str) -> bool:
        return key in self._pinned

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    def pin(self, key: str) -> None:
        self._pinned.add(key)

    def unpin(self, key: str) -> None:
        """Idempotent: unpinning a key that is not pinned does nothing."""
        self._pinned.discard(key)

    def evict(self, key: str) -> int | None:
        """Drop ``key`` (and its pin); returns the slot it freed, or None if not resident."""
        self._pinned.discard(key)
        slot = self._resident.pop(key, None)
        if slot is not None:
            self._free.append(slot)
        return slot

    def rekey(self, old: str, new: str) -> int:
        """Hand ``old``'s slot to ``new`` (most recently used; ``old``'s pin goes), for the
        caller to write ``new``'s weights over ``old``'s: an in-place update, no eviction."""
        self._pinned.discard(old)
        slot = self._resident.pop(old)
        self._resident[new] = slot
        return slot

    def acquire(self, keys: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, int]]]:
        """Make every key resident for this step and mark them most recently used.

        Returns ``(slots, loads)``: ``slots`` maps every distinct key to its slot; ``loads``
        lists the ``(key, slot)`` pairs that were not resident and that the caller must fill
        with weights before running. Free slots are used first, then the least-recently used
        unpinned keys not in ``keys`` are evicted. Raises ``RuntimeError``, changing nothing,
        if the keys cannot all fit.
        """
        wanted = list(dict.fromkeys(keys))  # dedupe, keep order
        wanted_set = set(wanted)
        missing = [k for k in wanted if k not in self._resident]
        victims = [k for k in self._resident if k not in wanted_set and k not in self._pinned]
        if len(missing) > len(self._free) + len(victims):
            raise RuntimeError(
                f"{len(wanted)} adapters requested but only {len(self._free) + len(victims)} "
                f"of {self.num_slots} slots can be freed for the {len(missing)} not resident"
            )
        loads: list[tuple[str, int]] = []
        victim_iter = iter(victims)  # LRU first
        for key in missing:
            slot = self._free.popleft() if self._free else self._resident.pop(next(victim_iter))
            self._resident[key] = slot
            loads.append((key, slot))
        for key in wanted:
            self._resident.move_to_end(key)
        return {k: self._resident[k] for k in wanted}, loads
