"""Slot writes: the ordering rules of an asynchronous copy, and the CPU's synchronous copy.

A CUDA event cannot run here, so the asynchronous cases drive the real bookkeeping
(``SlotWrites``, ``SlotCopier.writing``, ``LoRAModelManager.load_slot``) with a fence that
completes when the test says so, as a copy still in flight on a side stream would
(``tests/slot_helpers.py``).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from slot_helpers import HeldFence, InFlightCopier, TwoLayers, small_adapter

from loraplex.adapters.host_cache import HostCache
from loraplex.adapters.weights import LoRAAdapter
from loraplex.lora.manager import LoRAModelManager
from loraplex.lora.slot_copier import SlotCopier, slot_copier
from loraplex.lora.slot_writes import SlotWrites


def test_a_step_waits_only_for_the_slots_it_reads() -> None:
    writes: SlotWrites[HeldFence] = SlotWrites()
    loading, other = HeldFence(), HeldFence()
    writes.add(3, loading, keepalive="weights of 3")
    writes.add(5, other, keepalive="weights of 5")
    assert writes.wait_for([1, 2]) == 0  # a step of other slots does not wait at all
    assert loading.compute_waits == other.compute_waits == 0
    assert writes.wait_for([3, 3, 1]) == 1
    assert (loading.compute_waits, other.compute_waits) == (1, 0)
    assert writes.wait_for([3]) == 0  # the compute stream is ordered after it already
    assert writes.in_flight(3)  # waited for on the device, still copying
    loading.finish()
    assert not writes.in_flight(3) and writes.in_flight(5)
    assert writes.wait_for([3]) == 0
    assert writes.held() == ["weights of 5"]


def test_a_slot_rewritten_mid_copy_keeps_both_writes() -> None:
    """Evicted and refilled before its first copy finished: the next reader waits for both,
    and the first write's weights stay alive until that write is done."""
    writes: SlotWrites[HeldFence] = SlotWrites()
    first, second = HeldFence(), HeldFence()
    writes.add(0, first, keepalive="old")
    writes.add(0, second, keepalive="new")
    assert writes.wait_for([0]) == 2
    second.finish()
    assert writes.in_flight(0) and writes.held() == ["old"]
    first.finish()
    writes.reap()
    assert not writes.in_flight(0) and writes.held() == []


def test_a_write_that_completed_is_not_kept() -> None:
    writes: SlotWrites[HeldFence] = SlotWrites()
    fence = HeldFence()
    fence.finish()
    writes.add(2, fence, keepalive=object())
    assert writes.held() == [] and writes.wait_for([2]) == 0 and fence.compute_waits == 0


def test_eviction_during_an_in_flight_load_keeps_the_weights_alive() -> None:
    """The host cache drops an adapter while its slot copy is in flight: the copy still holds
    the adapter's tensors, and lets go of them once its fence completes."""
    manager = LoRAModelManager(TwoLayers(), num_slots=2, max_rank=4)
    manager.copier = copier = InFlightCopier()
    host: HostCache[LoRAAdapter] = HostCache(capacity=1)
    host.put("a@v0", small_adapter("a"))
    manager.load_slot(1, host.get("a@v0"))
    source = weakref.ref(host.get("a@v0").modules["q_proj"].a)
    assert host.put("b@v1", small_adapter("b", seed=1)) == ["a@v0"]  # evicted mid-copy
    gc.collect()
    assert source() is not None, "an in-flight copy lost its source"
    assert not manager.copier.is_ready(1)
    manager.wait_for_slots([1])
    assert copier.fences[0].compute_waits == 1  # the reading step waits for the copy
    copier.fences[0].finish()
    manager.wait_for_slots([1])  # finished writes let go of what they held
    gc.collect()
    assert source() is None and manager.copier.is_ready(1)


def test_a_failed_write_is_still_fenced() -> None:
    """A write that raises part way may have copies in flight: its fence and host tensors
    are kept like any other's."""
    copier = InFlightCopier()
    with pytest.raises(RuntimeError, match="half done"), copier.writing(0, keepalive="a"):
        raise RuntimeError("half done")
    assert copier.writes.held() == ["a"] and not copier.is_ready(0)


def test_the_cpu_copies_synchronously_into_the_tables() -> None:
    """The real CPU path: A as is, (scale·B)ᵀ, rows past the rank zero, rounded once to the
    tables' dtype; nothing left in flight, nothing to wait for."""
    for dtype in (torch.float32, torch.bfloat16):
        manager = LoRAModelManager(TwoLayers(), num_slots=2, max_rank=4, table_dtype=dtype)
        assert type(manager.copier) is SlotCopier
        manager.load_slot(0, small_adapter("big", rank=4, seed=3))  # rows 2..3 must be cleared
        weights = small_adapter("a", rank=2, scale=0.5)
        manager.load_slot(0, weights)
        q = manager.layers["q_proj"]
        expected_a = weights.modules["q_proj"].a.to(dtype)
        expected_b = (weights.modules["q_proj"].b * 0.5).T.to(dtype)
        assert torch.equal(q.lora_a[0, :2], expected_a)
        assert torch.equal(q.lora_b[0, :2], expected_b)
        assert not q.lora_a[0, 2:].any() and not q.lora_b[0, 2:].any()
        assert not manager.layers["v_proj"].lora_a[0].any()  # not targeted: zero
        assert int(manager.slot_ranks[0]) == 2
        assert manager.copier.is_ready(0) and manager.copier.wait_for([0]) == 0
        manager.load_slot(0, None)
        assert not q.lora_a[0].any() and int(manager.slot_ranks[0]) == 0


def test_the_copier_follows_the_device() -> None:
    assert type(slot_copier(torch.device("cpu"))) is SlotCopier
