"""The reference LoRA op in pure torch: the oracle every faster kernel is tested against."""

from __future__ import annotations

from collections.abc import Callable

import torch

from loraplex.lora.ops.meta import LoRAMeta

# The signature every backend implements: (y, x, lora_a, lora_b, meta) -> None, in place.
AddLoRA = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LoRAMeta], None]


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    meta: LoRAMeta,
) -> None:
    """In place: ``y[t] += B[s_t] @ (A[s_t] @ x[t])`` for every adapter row ``t``.

    x: [T, in], y: [T, out]; lora_a: [S, R, in] holds A; lora_b: [S, R, out] holds B transposed,
    with the adapter's scale (``alpha/r`` or ``alpha/sqrt(r)``) folded in; ranks below R are
    zero-padded (``meta.slot_ranks`` is not needed here); ``s_t`` is row t's slot (``meta``).
    The tables may have another dtype than x and y (``--lora-dtype``): both sides are then
    computed in the wider of the two (16-bit tables with float32 rows: float32, as the kernels
    sum) and the result is added into y in y's dtype. Rows ``[meta.num_lora_rows, T)`` are
    base-only and left untouched. B is stored transposed because the expand then reads whole
    contiguous rows of ``R x out`` (what a streaming kernel wants; matmul takes either).

    Two exact strategies, chosen once per step by ``build_lora_meta``:
    ``padded`` lays each slot's rows into a [S, P, in] block and runs two batched matmuls
    (decode: few rows per slot, no per-slot overhead); ``grouped`` runs grouped matmuls over
    the contiguous slot segments (prefill: many rows per slot, no padding).
    """
    n = meta.num_lora_rows
    xs, ys = x[:n], y[:n]
    dtype = torch.promote_types(x.dtype, lora_a.dtype)
    if dtype != lora_a.dtype or dtype != lora_b.dtype:
        lora_a, lora_b = lora_a.to(dtype), lora_b.to(dtype)  # a copy: the reference's cost
    xs = xs.to(dtype)
    a_t = lora_a.transpose(1, 2)  # [S, in, R]
    if meta.padded_rows:
        slots, pad = lora_a.shape[0], meta.padded_rows
        x_pad = xs.index_select(0, meta.gather_rows).view(slots, pad, -1)
        y_pad = torch.bmm(torch.bmm(x_pad, a_t), lora_b).view(slots * pad, -1)
        ys.add_(y_pad.index_select(0, meta.scatter_rows))
    else:
        xa = torch._grouped_mm(xs, a_t, offs=meta.group_ends)
        ys.add_(torch._grouped_mm(xa, lora_b, offs=meta.group_ends))
