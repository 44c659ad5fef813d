"""Slot writes left in flight on the CPU, as a GPU's copies are when the host returns, and a
two-projection model to load slots of.

A CUDA event cannot run here, so tests drive the real bookkeeping (``SlotWrites``,
``SlotCopier.writing``, ``LoRAModelManager.load_slot``, ``AdapterTiers.activate``) with
:class:`HeldFence`, a fence that completes when the test says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from loraplex.adapters.weights import LoRAAdapter, LoRAWeights
from loraplex.lora.slot_copier import SlotCopier


class HeldFence:
    """A write in flight until ``finish()``; counts the compute stream's waits on it and
    calls ``on_wait`` at each (a test's log of what the compute stream saw, in order)."""

    def __init__(self, on_wait: Callable[[], None] = lambda: None) -> None:
        self.finished = False
        self.compute_waits = 0
        self.on_wait = on_wait

    def done(self) -> bool:
        return self.finished

    def hold_compute(self) -> None:
        self.compute_waits += 1
        self.on_wait()

    def finish(self) -> None:
        self.finished = True


class InFlightCopier(SlotCopier):
    """The CPU copier with every write left in flight (its fences are HeldFences), as a GPU's
    copies are when the host returns: the data is written, but the rules must still hold.
    ``asynchronous`` as a GPU's copier is, so the engine prefetches into slots too."""

    asynchronous = True

    def __init__(self, log: Callable[[str], None] = lambda event: None) -> None:
        super().__init__(torch.device("cpu"))
        self.fences: list[HeldFence] = []
        self.log = log  # gets "load i" as write i is fenced, "wait i" as a step waits for it

    def _fence(self) -> HeldFence:
        index = len(self.fences)
        self.log(f"load {index}")
        self.fences.append(HeldFence(lambda: self.log(f"wait {index}")))
        return self.fences[-1]


class TwoLayers(nn.Module):
    """Two projections an adapter can target (in 8; out 6 and 4), and an output head."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 6, bias=False)
        self.v_proj = nn.Linear(8, 4, bias=False)
        self.lm_head = nn.Linear(6, 5, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def small_adapter(name: str, rank: int = 2, scale: float = 0.5, seed: int = 0) -> LoRAAdapter:
    """A LoRA of ``rank`` on :class:`TwoLayers`' q_proj only, with random A and B."""
    generator = torch.Generator().manual_seed(seed)
    modules = {
        "q_proj": LoRAWeights(
            torch.randn(rank, 8, generator=generator),
            torch.randn(6, rank, generator=generator),
            scale,
        )
    }
    return LoRAAdapter(name=name, version=f"v{seed}", modules=modules)
