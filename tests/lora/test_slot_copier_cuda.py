"""The CUDA slot copier for real: pinned host weights, a side stream, an event per slot write.

The copy stream is first kept busy (``torch.cuda._sleep``), so each write is still in flight
when the host returns, as a large adapter's would be: other compute work must finish beside it,
a read of the slot after ``wait_for_slots`` must see the new weights, and the host tensors must
outlive the copy.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from slot_helpers import TwoLayers, small_adapter

from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.store import open_store
from loraplex.adapters.weights import pinned
from loraplex.lora.manager import LoRAModelManager
from loraplex.lora.slot_copier import CudaSlotCopier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
BUSY_CYCLES = 2_000_000_000  # ~1 s of a GPU clock: far longer than the rest of a test step


@pytest.fixture
def manager() -> LoRAModelManager:
    model = TwoLayers().to(torch.device("cuda", torch.cuda.current_device()))
    return LoRAModelManager(model, num_slots=2, max_rank=4, table_dtype=torch.bfloat16)


def _busy(copier: CudaSlotCopier) -> None:
    with torch.cuda.stream(copier.stream):
        torch.cuda._sleep(BUSY_CYCLES)


def test_a_load_runs_beside_compute_and_lands_before_its_reader(manager) -> None:
    copier = manager.copier
    assert isinstance(copier, CudaSlotCopier)
    host = pinned(small_adapter("a", rank=4, scale=0.5))
    weights = host.modules["q_proj"]
    assert weights.a.is_pinned() and weights.b.is_pinned()
    expected_a = weights.a.to(torch.bfloat16)
    expected_b = (weights.b * 0.5).T.to(torch.bfloat16)
    torch.cuda.synchronize()
    _busy(copier)
    manager.load_slot(0, host)  # returns at once: the copies wait behind the busy stream
    assert not copier.is_ready(0)
    other = torch.full((1024,), 2.0, device=copier.device).sum()  # reads no slot
    assert other.item() == 2048.0  # finished on the compute stream...
    assert not copier.is_ready(0), "compute waited for a copy it does not read"  # ...alone
    manager.wait_for_slots([0])
    q = manager.layers["q_proj"]
    assert torch.equal(q.lora_a[0, :4].cpu(), expected_a)  # read on the compute stream
    assert torch.equal(q.lora_b[0, :4].cpu(), expected_b)
    assert copier.is_ready(0)


def test_the_host_weights_outlive_an_evicted_in_flight_copy(manager) -> None:
    copier = manager.copier
    host = pinned(small_adapter("a", rank=4, seed=2))
    expected = host.modules["q_proj"].a.to(torch.bfloat16)
    source = weakref.ref(host.modules["q_proj"].a)
    torch.cuda.synchronize()
    _busy(copier)
    manager.load_slot(1, host)
    del host  # the host cache let it go mid-copy
    gc.collect()
    assert source() is not None and not copier.is_ready(1)
    torch.cuda.synchronize()
    manager.wait_for_slots([1])  # done: the copy lets go of it
    gc.collect()
    assert source() is None
    assert torch.equal(manager.layers["q_proj"].lora_a[1, :4].cpu(), expected)


def test_a_cuda_registry_keeps_adapters_pinned(tmp_path) -> None:
    registry = AdapterRegistry(
        open_store(str(tmp_path / "store"), tmp_path), torch.float32, None, 2, pin_memory=True
    )
    registry.keep("a@v0", small_adapter("a"))
    kept = registry.loaded("a@v0").modules["q_proj"]
    assert kept.a.is_pinned() and kept.b.is_pinned()
    assert kept.b.T.is_contiguous()  # still column-major, as the slot copy reads it
    registry.close()
