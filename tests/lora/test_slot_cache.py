"""SlotCache: LRU order, loads only on misses, pinning, explicit eviction, over-subscription."""

from __future__ import annotations

import pytest

from loraplex.lora.slot_cache import SlotCache


def test_first_acquire_loads_into_free_slots() -> None:
    cache = SlotCache(3)
    slots, loads = cache.acquire(["a@1", "b@1"])
    assert slots == {"a@1": 0, "b@1": 1}
    assert loads == [("a@1", 0), ("b@1", 1)]
    assert cache.lookup("a@1") == 0
    assert cache.lookup("c@1") is None


def test_re_acquire_hit_does_not_reload() -> None:
    cache = SlotCache(2)
    cache.acquire(["a", "b"])
    slots, loads = cache.acquire(["b", "a", "a"])
    assert slots == {"b": 1, "a": 0}
    assert loads == []


def test_evicts_least_recently_used_key_not_in_the_step() -> None:
    cache = SlotCache(3)
    cache.acquire(["a", "b", "c"])
    cache.acquire(["a"])  # LRU order now b, c, a
    assert list(cache.resident()) == ["b", "c", "a"]
    slots, loads = cache.acquire(["d"])
    assert loads == [("d", 1)]  # took b's slot
    assert cache.lookup("b") is None
    assert list(cache.resident()) == ["c", "a", "d"]
    # Keys in the step are never evicted, even when they are the least recently used.
    slots, loads = cache.acquire(["c", "e"])
    assert loads == [("e", 0)]  # a was evicted, not c
    assert slots == {"c": 2, "e": 0}


def test_lookup_does_not_touch_lru_order() -> None:
    cache = SlotCache(2)
    cache.acquire(["a", "b"])
    assert cache.lookup("a") == 0
    _, loads = cache.acquire(["c"])
    assert loads == [("c", 0)]  # a was still the LRU


def test_pinned_keys_are_not_evicted() -> None:
    cache = SlotCache(2)
    cache.acquire(["a", "b"])
    cache.pin("a")
    assert cache.is_pinned("a")
    _, loads = cache.acquire(["c"])
    assert loads == [("c", 1)]  # b went although a is older
    assert set(cache.resident()) == {"a", "c"}
    cache.unpin("a")
    cache.unpin("a")  # idempotent
    _, loads = cache.acquire(["d"])
    assert loads == [("d", 0)]


def test_pin_before_residency_applies_once_loaded() -> None:
    cache = SlotCache(2)
    cache.pin("a")
    assert cache.lookup("a") is None  # pinning does not load
    cache.acquire(["a", "b"])
    _, loads = cache.acquire(["c"])
    assert loads == [("c", 1)]
    assert cache.lookup("a") == 0


def test_over_subscription_raises_and_changes_nothing() -> None:
    cache = SlotCache(2)
    with pytest.raises(RuntimeError):
        cache.acquire(["a", "b", "c"])
    assert cache.resident() == {}
    cache.acquire(["a", "b"])
    cache.pin("a")
    with pytest.raises(RuntimeError):
        cache.acquire(["c", "d"])  # only b's slot can be freed
    assert cache.resident() == {"a": 0, "b": 1}
    _, loads = cache.acquire(["c"])
    assert loads == [("c", 1)]


def test_explicit_evict_frees_the_slot_and_the_pin() -> None:
    cache = SlotCache(2)
    cache.acquire(["a@1", "b@1"])
    cache.pin("a@1")
    assert cache.evict("a@1") == 0
    assert cache.evict("a@1") is None
    assert not cache.is_pinned("a@1")
    assert cache.resident() == {"b@1": 1}
    _, loads = cache.acquire(["a@2"])  # a replaced adapter gets a fresh load
    assert loads == [("a@2", 0)]
    assert cache.lookup("b@1") == 1


def test_rejects_non_positive_slot_count() -> None:
    with pytest.raises(ValueError):
        SlotCache(0)


def test_rekey_hands_the_slot_to_the_new_version_most_recently_used() -> None:
    cache = SlotCache(2)
    cache.acquire(["a@1", "b@1"])
    cache.pin("a@1")
    assert cache.rekey("a@1", "a@2") == 0
    assert cache.resident() == {"b@1": 1, "a@2": 0}  # a@2 most recently used
    assert cache.lookup("a@1") is None and not cache.pinned  # the old version's pin went
    _, loads = cache.acquire(["a@2", "c@1"])  # a@2 is resident: only c loads, over b
    assert loads == [("c@1", 1)]
