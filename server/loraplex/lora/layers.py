"""The LoRA layer: a frozen base projection plus the batched gather from adapter slot tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from loraplex.adapters.weights import LoRAWeights
from loraplex.lora.ops import AddLoRA, LoRAMeta, add_lora
from loraplex.lora.quantized import compute_dtype, dequantized_weight, projection_device
from loraplex.lora.slot_copier import SlotCopier

# nn.Linear covers its quantized subclasses too (bitsandbytes' Linear4bit and Linear8bitLt).
LORA_BASE_TYPES = (nn.Linear, Conv1D)


class LoRAContext:
    """State shared by every LoRA layer of one model.

    ``add_lora``: the op backend, chosen once for the model (``ops.select_add_lora``).
    Per step: ``meta``, the slot gather (None: no row uses a slot); ``merged``, the key of the
    one pre-merged adapter in this step and its row count (those rows come last).
    ``every_layer``: call the op in every layer, even one whose slots are all empty now (a CUDA
    graph captures the calls made, and must still apply an adapter loaded after its capture).
    """

    def __init__(self, op: AddLoRA = add_lora) -> None:
        self.add_lora = op
        self.meta: LoRAMeta | None = None
        self.merged: tuple[str, int] | None = None
        self.every_layer = False


def in_out_features(base: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear (weight [out, in]) or a GPT-2 Conv1D (weight [in, out])."""
    if isinstance(base, Conv1D):
        return base.weight.shape[0], base.weight.shape[1]
    return base.in_features, base.out_features


class LoRALinear(nn.Module):
    """``y = base(x) + scale_s · B_s · A_s · x`` with ``s`` the slot of x's row.

    lora_a: [S, R, in] and lora_b: [S, R, out] are preallocated slot tables; a slot holds one
    adapter's A and ``(scale·B)ᵀ``, zero-padded from its rank up to R; an all-zero slot is a
    no-op. The tables are in ``table_dtype`` (``--lora-dtype``; None: the base's compute dtype,
    ``fallback_dtype`` where the base does not say, e.g. an 8-bit one), an adapter rounded to it
    once, as it is written into a slot. ``base`` may be quantized (``lora/quantized.py``): it is
    called as it is, and the update is added to what it returns.
    """

    def __init__(
        self,
        base: nn.Module,
        num_slots: int,
        max_rank: int,
        context: LoRAContext,
        table_dtype: torch.dtype | None = None,
        fallback_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.base = base
        self.context = context
        self.in_features, self.out_features = in_out_features(base)
        # A quantized base computes in its compute dtype: the tables default to that one.
        self.compute_dtype = compute_dtype(base, fallback_dtype)
        dtype = self.compute_dtype if table_dtype is None else table_dtype
        device = projection_device(base)
        # Allocated where the weight is (the device): no host copy of the tables, ever.
        self.register_buffer(
            "lora_a",
            torch.zeros(num_slots, max_rank, self.in_features, dtype=dtype, device=device),
            persistent=False,
        )
        self.register_buffer(
            "lora_b",
            torch.zeros(num_slots, max_rank, self.out_features, dtype=dtype, device=device),
            persistent=False,
        )
        # Slots holding weights for this module; when none does, the layer costs nothing extra.
        self.occupied: set[int] = set()
        # key -> merged weight [out, in] of a pre-merged adapter (only modules it targets).
        self.merged_weights: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str) -> object:
        """What the model reads of its projection (``weight``, ``bias`` ...) is the base's:
        some models use a projection's weight directly (Hunyuan-MoE's router reads
        ``gate.wg.weight``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base_forward(x)
        meta = self.context.meta
        if meta is not None and (self.occupied or self.context.every_layer):
            self.context.add_lora(
                y.view(-1, self.out_features),
                x.reshape(-1, self.in_features),
                self.lora_a,
                self.lora_b,
                meta,
            )
        return y

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W0·x``, except the last ``m`` rows of a pre-merged adapter: ``(W0 + s·B·A)·x``."""
        merged = self.context.merged
        weight = self.merged_weights.get(merged[0]) if merged else None
        if weight is None:
            return self.base(x)
        rows = merged[1]
        if rows == x.shape[-2]:
            return F.linear(x, weight, self.base.bias)
        head = self.base(x[..., :-rows, :])
        return torch.cat([head, F.linear(x[..., -rows:, :], weight, self.base.bias)], dim=-2)

    def merged_weight(self, weights: LoRAWeights) -> torch.Tensor:
        """A new ``W0 + scale·B·A`` [out, in] (B [out, r] @ A [r, in], summed in float32).

        Only reads ``W0``, which is never modified (so unmerging is exact: drop the copy), so it
        may run on another thread beside a forward; ``merged_weights[key] = ...`` installs it.
        A quantized ``W0`` is dequantized first and the copy kept in the compute dtype (never
        requantized: the rounding would be as large as the update); where it cannot be
        dequantized exactly, :class:`MergeUnsupportedError`.
        """
        base = dequantized_weight(self.base, torch.float32)
        a = weights.a.to(base.device, torch.float32)
        b = weights.b.to(base.device, torch.float32)
        merged = torch.addmm(base, b, a, alpha=weights.scale)  # one pass, no delta copy
        return merged.to(self.compute_dtype)

    def set_slot(
        self, slot: int, weights: LoRAWeights | None, copier: SlotCopier | None = None
    ) -> None:
        """Write one adapter's weights into ``slot`` (scale folded into B), or clear it.

        ``copier`` issues the host-to-device copies (None: synchronous); the caller fences
        them (``SlotCopier.writing``) on a GPU.
        """
        if weights is None:
            if slot in self.occupied:  # an empty slot is all zeros already
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()
                self.occupied.discard(slot)
            return
        copier = copier or SlotCopier(self.lora_a.device)
        r = weights.rank
        copier.copy(self.lora_a[slot, :r], weights.a)
        self.lora_a[slot, r:].zero_()
        copier.copy(self.lora_b[slot, :r], weights.b.T, weights.scale)  # b.T: contiguous rows
        self.lora_b[slot, r:].zero_()
        self.occupied.add(slot)
