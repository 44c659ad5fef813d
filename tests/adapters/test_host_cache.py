"""Host-memory LRU: capacity, recency, and references that keep entries alive."""

from __future__ import annotations

import pytest

from loraplex.adapters.host_cache import HostCache


def test_lru_eviction_follows_recency() -> None:
    cache: HostCache[int] = HostCache(2)
    assert cache.put("a", 1) == [] and cache.put("b", 2) == []
    assert cache.get("a") == 1  # b is now the least recently used
    assert cache.put("c", 3) == ["b"]
    assert cache.keys() == ["a", "c"] and "b" not in cache and len(cache) == 2


def test_referenced_entries_survive_until_released() -> None:
    cache: HostCache[int] = HostCache(1)
    cache.put("a", 1)
    cache.acquire("a")
    cache.acquire("a")
    assert cache.put("b", 2) == []  # over capacity rather than drop weights in use
    assert cache.keys() == ["a", "b"]
    assert cache.release("a") == ["b"]  # a is still in use, so b goes
    assert cache.release("a") == []
    cache.put("b", 2)
    assert cache.keys() == ["b"]  # a, now unused and least recent, made room
    cache.acquire("b")
    cache.discard("b")
    assert "b" in cache  # still referenced
    cache.release("b")
    cache.discard("b")
    assert "b" not in cache


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HostCache(0)
