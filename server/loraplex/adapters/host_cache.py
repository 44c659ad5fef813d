"""Host-memory tier of loaded adapters: LRU over ``--max-cpu-loras`` entries, with references.

Host-side bookkeeping only: values are opaque. An entry referenced by an unfinished request is
never evicted, so a request never loses weights it was admitted with (the cache may briefly
exceed its capacity instead). ``on_unused`` tells the owner when a key's last reference goes, so
it can drop what it kept only for those requests (the registry: replaced or removed versions).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class HostCache(Generic[V]):
    """key -> value, least recently used first; ``refs`` pin entries while requests use them."""

    def __init__(
        self,
        capacity: int,
        on_unused: Callable[[str], None] = lambda key: None,
        on_evict: Callable[[list[str]], None] = lambda keys: None,
    ) -> None:
        if capacity <= 0:
            raise ValueError("the host cache needs a positive capacity")
        self.capacity = capacity
        self.on_unused = on_unused  # called with a key whose last reference was just released
        self.on_evict = on_evict  # called with the keys evicted to stay within capacity
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._refs: dict[str, int] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> V | None:
        """The value (marked most recently used) or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> list[str]:
        """Insert ``key``; returns the keys evicted to stay within capacity."""
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            evicted = self._evict_locked(keep=key)
        if evicted:
            self.on_evict(evicted)
        return evicted

    def acquire(self, key: str) -> None:
        with self._lock:
            self._refs[key] = self._refs.get(key, 0) + 1

    def release(self, key: str) -> list[str]:
        """Drop one reference; on the last one, ``on_unused(key)`` runs (outside the lock)."""
        with self._lock:
            count = self._refs.get(key, 0) - 1
            if count > 0:
                self._refs[key] = count
            else:
                self._refs.pop(key, None)
            evicted = self._evict_locked()
        if evicted:
            self.on_evict(evicted)
        if count <= 0:
            self.on_unused(key)
        return evicted

    def held(self, key: str) -> bool:
        """Whether an unfinished request still references ``key``."""
        with self._lock:
            return key in self._refs

    def discard(self, key: str) -> None:
        """Drop ``key`` unless a request still uses it (then the owner discards it again from
        ``on_unused``, as the registry does for replaced and removed versions)."""
        with self._lock:
            if key not in self._refs:
                self._entries.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _evict_locked(self, keep: str | None = None) -> list[str]:
        evicted = []
        for key in list(self._entries):
            if len(self._entries) <= self.capacity:
                break
            if key not in self._refs and key != keep:
                del self._entries[key]
                evicted.append(key)
        return evicted
