"""Installs LoRA layers into a transformers model and fills their slot tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from loraplex.adapters.weights import LoRAAdapter
from loraplex.lora.layers import LORA_BASE_TYPES, LoRAContext, LoRALinear, in_out_features
from loraplex.lora.moe import ParamLoRA, install_moe_lora, routers
from loraplex.lora.ops import AddLoRA, LoRAMeta, add_lora
from loraplex.lora.quantized import is_quantized, merge_refusal
from loraplex.lora.slot_copier import slot_copier

# Slot tables pad ranks to a multiple of this, so 16-bit grouped matmuls get 16-byte strides.
RANK_ALIGNMENT = 8


def padded_rank(max_rank: int) -> int:
    """The rank of the slot tables: ``max_rank`` rounded up to a multiple of RANK_ALIGNMENT."""
    return -(-max_rank // RANK_ALIGNMENT) * RANK_ALIGNMENT


class LoRAModelManager:
    """Owns the LoRA layers of one model: ``num_slots`` slots of rank <= ``max_rank``.

    Every Linear/Conv1D projection except the output embedding is wrapped, and every fused MoE
    expert tensor and router gets slot tables (``moe.py``), so any adapter that targets them
    can be loaded later without touching the model again.
    Adapters arrive checked against :meth:`module_shapes` and a rank limit of ``max_rank``.
    The slot tables are in ``table_dtype`` (None: each projection's compute dtype; a quantized
    projection is wrapped as it is, ``lora/quantized.py``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_slots: int,
        max_rank: int,
        op: AddLoRA = add_lora,
        table_dtype: torch.dtype | None = None,
    ) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.context = LoRAContext(op)
        output = model.get_output_embeddings()
        skip = routers(model)  # MoE routers get their own tables below
        targets = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, LORA_BASE_TYPES)
            and module is not output
            and id(module) not in skip
        ]
        self.layers: dict[str, LoRALinear] = {}
        # The model's float dtype: what a quantized projection that names no compute dtype
        # computes in (the embeddings' and norms' dtype).
        floats = (p.dtype for p in model.parameters() if not is_quantized(p))
        fallback = next(floats, torch.float32)
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = LoRALinear(
                module, num_slots, padded_rank(max_rank), self.context, table_dtype, fallback
            )
            setattr(parent, child, layer)
            self.layers[name] = layer
        # PEFT's target_parameters: MoE expert tensors and routers, by parameter path.
        self.params: dict[str, ParamLoRA] = install_moe_lora(
            model, num_slots, padded_rank(max_rank), self.context, table_dtype
        )
        # The real rank of each slot's adapter (0: empty), handed to the kernels with every
        # step's metadata so they stream only that many rows of the padded slot tables.
        device = next(iter(self.layers.values())).lora_a.device if self.layers else "cpu"
        self.slot_ranks = torch.zeros(num_slots, dtype=torch.int32, device=device)
        # On a GPU slot writes run on a side stream, fenced per slot (lora/slot_copier.py).
        self.copier = slot_copier(torch.device(device))

    def module_shapes(self) -> dict[str, tuple[int, ...]]:
        """``(in_features, out_features)`` of every wrapped projection and ``(E, in, out)`` of
        every adapted parameter: what an adapter's shapes are checked against before it can
        reach a slot (``adapters.folder_check``)."""
        shapes: dict[str, tuple[int, ...]] = {
            name: (layer.in_features, layer.out_features) for name, layer in self.layers.items()
        }
        shapes.update((path, table.shape) for path, table in self.params.items())
        return shapes

    def load_slot(self, slot: int, adapter: LoRAAdapter | None) -> None:
        """Make ``slot`` hold ``adapter`` in every layer (modules it does not target: zero).

        On a GPU this only issues the copies (from pinned host memory, on the copier's stream)
        and returns; a step reads the slot only after :meth:`wait_for_slots`.
        """
        modules = adapter.modules if adapter is not None else {}
        with self.copier.writing(slot, adapter):
            for name, layer in self.layers.items():
                layer.set_slot(slot, modules.get(name), self.copier)
            for path, table in self.params.items():
                table.set_slot(slot, modules.get(path), self.copier)
        # On the compute stream: in order with the steps, and read only by steps that use the
        # slot, which wait for its writes.
        self.slot_ranks[slot] = adapter.max_rank if adapter is not None else 0

    def wait_for_slots(self, slots: Iterable[int]) -> None:
        """Before a step that reads ``slots``: its forward waits (on the device, not the
        host) for their writes still in flight; steps that read other slots never wait."""
        self.copier.wait_for(slots)

    def merged_weights(self, adapter: LoRAAdapter) -> dict[str, torch.Tensor]:
        """``W0 + scale·B·A`` for every module ``adapter`` targets (the rest stays shared).

        Reads the base weights only, so it runs on a worker thread while the engine steps.
        An adapter of MoE expert tensors or routers cannot be merged (it is served unmerged).
        """
        if self.unmergeable(adapter):
            raise ValueError("an adapter of MoE expert tensors or routers cannot be merged")
        with torch.no_grad():  # grad mode is per thread: a worker thread starts with it on
            return {
                name: self.layers[name].merged_weight(weights)
                for name, weights in adapter.modules.items()
            }

    def merge_refusal(self) -> str | None:
        """Why this base cannot serve pre-merged adapters (None: it can): a projection whose
        quantized weight has no exact dequantization here (``lora/quantized.py``)."""
        for name, layer in self.layers.items():
            reason = merge_refusal(layer.base)
            if reason is not None:
                return f"{name}: {reason}"
        return None

    def unmergeable(self, adapter: LoRAAdapter) -> list[str]:
        """The parameters ``adapter`` adapts that merging does not cover (MoE expert tensors
        and routers: the merged path swaps projection weights only)."""
        return sorted(set(adapter.modules) & set(self.params))

    def install_merged(self, key: str, weights: dict[str, torch.Tensor]) -> None:
        """Serve ``key`` pre-merged from now on (engine thread, between steps: dict stores)."""
        for name, weight in weights.items():
            self.layers[name].merged_weights[key] = weight

    def unmerge(self, key: str) -> list[torch.Tensor]:
        """Stop serving ``key`` pre-merged (engine thread); returns the copies it dropped, so
        the caller can free them off the engine thread. ``W0`` was never touched."""
        dropped = (layer.merged_weights.pop(key, None) for layer in self.layers.values())
        return [weight for weight in dropped if weight is not None]

    def set_step(self, meta: LoRAMeta | None, merged: tuple[str, int] | None) -> None:
        if meta is not None and meta.slot_ranks is None:
            meta = dataclasses.replace(meta, slot_ranks=self.slot_ranks)
        self.context.meta = meta
        self.context.merged = merged


def base_projection(module: nn.Module) -> nn.Module:
    """The frozen projection under a possibly wrapped module."""
    return module.base if isinstance(module, LoRALinear) else module


__all__ = ["LoRAModelManager", "base_projection", "in_out_features", "padded_rank"]
