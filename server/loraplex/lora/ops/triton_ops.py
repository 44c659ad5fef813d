"""``add_lora`` in Triton: two launches per layer (shrink, expand), for CUDA (or the interpreter).

Imported only when the Triton backend is chosen (``select_add_lora``), so the server runs
without triton installed. Same signature and math as ``torch_ops.add_lora``, the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.lora.ops.meta import LoRAMeta
from loraplex.lora.ops.torch_ops import AddLoRA
from loraplex.lora.ops.triton_kernels import expand_kernel, shrink_kernel, triton
from loraplex.triton_support import upcast_dots

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# 16-bit tl.dot needs every dimension of its tiles to be at least 16 on real hardware.
MIN_DOT_DIM = 16
# Split-K only pays when few row tiles keep the SMs busy; past this many rows, one split.
SPLIT_K_MAX_ROWS = 256
# Aim for about this many live shrink programs (an H200 has 132 SMs).
TARGET_PROGRAMS = 512
MAX_SPLIT_K = 32
BAD_TENSORS = "add_lora (triton): x, y and the tables must share one dtype and device"
BAD_META = "add_lora (triton): the metadata does not fit these tensors"


@dataclass(frozen=True)
class Tiles:
    """One launch configuration; every size is a power of two."""

    block_m: int  # rows per program
    block_r: int  # rank columns per shrink program (expand: rank chunk per step)
    block_k: int  # input features per shrink step
    block_n: int  # output features per expand program
    split_k: int  # shrink partial sums over disjoint slices of the input features

    def __post_init__(self) -> None:
        for name in ("block_m", "block_r", "block_k", "block_n"):
            size = getattr(self, name)
            if size < MIN_DOT_DIM or size & (size - 1):
                raise ValueError(f"{name}={size}: tl.dot tiles must be powers of two >= 16")
        if self.split_k < 1:
            raise ValueError(f"split_k={self.split_k} must be at least 1")


def choose_tiles(rows: int, slots: int, fan_in: int, rank: int, split_k: int | None) -> Tiles:
    """Tiles from host-side bounds only (rows of the batch, slots, widths, the tables' rank),
    so the same grid serves every step of one padded batch size.

    ``split_k`` forces the split (tests); ``None`` splits small row counts until about
    TARGET_PROGRAMS shrink programs can be live: at most ``rows/block_m + slots`` row tiles hold
    rows, since each slot's segment adds at most one partial tile.
    """
    block_m = 16 if rows <= 128 else 64
    block_r = min(max(MIN_DOT_DIM, triton.next_power_of_2(rank)), 64)
    block_k = 64 if fan_in <= 1024 else 128
    if split_k is None:
        split_k = 1
        if rows <= SPLIT_K_MAX_ROWS:
            live = (-(-rows // block_m) + slots) * -(-rank // block_r)
            while (
                split_k < MAX_SPLIT_K
                and live * split_k * 2 <= TARGET_PROGRAMS
                and fan_in >= 2 * split_k * block_k
            ):
                split_k *= 2
    return Tiles(block_m, block_r, block_k, 64 if rows <= 128 else 128, split_k)


def _check(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, meta: LoRAMeta):
    if x.dim() != 2 or y.dim() != 2 or a.dim() != 3 or b.dim() != 3:
        raise ValueError("add_lora (triton): x and y must be [rows, features], tables [S, R, *]")
    if (
        len({t.dtype for t in (x, y, a, b)}) != 1
        or x.dtype not in DTYPES
        or len({t.device for t in (x, y, a, b)}) != 1
        or x.stride(1) != 1
        or y.stride(1) != 1
        or not (a.is_contiguous() and b.is_contiguous())
        or a.shape[:2] != b.shape[:2]
        or x.shape[1] != a.shape[2]
        or y.shape[1] != b.shape[2]
    ):
        raise ValueError(BAD_TENSORS)
    ends, ranks = meta.group_ends, meta.slot_ranks
    if (
        ends.dtype != torch.int32
        or ends.shape != (a.shape[0],)
        or ends.device != x.device
        or meta.num_lora_rows > min(x.shape[0], y.shape[0])
        or (ranks is not None and (ranks.dtype != torch.int32 or ranks.shape != ends.shape))
        or (ranks is not None and ranks.device != x.device)
    ):
        raise ValueError(BAD_META)


def kernel_constants(
    tiles: Tiles, table_rank: int, fan_in: int, has_ranks: bool, dtype: torch.dtype
) -> tuple[dict, dict]:
    """The compile-time arguments of the shrink and the expand kernel for one launch."""
    upcast = upcast_dots(dtype)
    common = {
        "TABLE_RANK": table_rank,
        "HAS_RANKS": has_ranks,
        "BLOCK_M": tiles.block_m,
        "BLOCK_R": tiles.block_r,
        "SPLIT_K": tiles.split_k,
        "UPCAST": upcast,
        "PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32",
    }
    k_per_split = -(-fan_in // (tiles.split_k * tiles.block_k)) * tiles.block_k
    shrink = common | {"BLOCK_K": tiles.block_k, "K_PER_SPLIT": k_per_split}
    return shrink, common | {"BLOCK_N": tiles.block_n}


def make_add_lora(split_k: int | None = None) -> AddLoRA:
    """An ``add_lora`` running the Triton kernels; ``split_k`` forces the split (tests)."""

    def add_lora(
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        meta: LoRAMeta,
    ) -> None:
        """``torch_ops.add_lora``'s math: ``y[t] += (A[s_t] @ x[t]) @ Bt[s_t]`` for adapter
        rows, in two launches. ``x`` and ``y`` may be column slices of wider tensors (rows
        strided, columns dense), so a fused projection's output (qkv, gate_up) takes each
        part's update in place at its column offset. The shrink keeps float32 partial sums;
        the expand casts them to the tables' dtype for 16-bit dots (float32 under the
        interpreter for bf16) and adds in float32 before one rounding into ``y``.
        """
        _check(y, x, lora_a, lora_b, meta)
        slots, table_rank, fan_in = lora_a.shape
        fan_out = lora_b.shape[2]
        rows = x.shape[0]  # a bound fixed per batch size: the grid never depends on the mix
        tiles = choose_tiles(rows, slots, fan_in, table_rank, split_k)
        ranks = meta.slot_ranks
        shrink, expand = kernel_constants(tiles, table_rank, fan_in, ranks is not None, x.dtype)
        ranks = ranks if ranks is not None else meta.group_ends  # unread without ranks
        buf = torch.empty(tiles.split_k, rows, table_rank, dtype=torch.float32, device=x.device)
        row_tiles = triton.cdiv(rows, tiles.block_m)
        rank_tiles = triton.cdiv(table_rank, tiles.block_r)
        shrink_kernel[(tiles.split_k * rank_tiles * row_tiles, slots)](
            x,
            lora_a,
            buf,
            meta.group_ends,
            ranks,
            fan_in,
            x.stride(0),
            lora_a.stride(0),
            lora_a.stride(1),
            buf.stride(0),
            buf.stride(1),
            **shrink,
        )
        expand_kernel[(row_tiles * triton.cdiv(fan_out, tiles.block_n), slots)](
            buf,
            lora_b,
            y,
            meta.group_ends,
            ranks,
            fan_out,
            y.stride(0),
            lora_b.stride(0),
            lora_b.stride(1),
            buf.stride(0),
            buf.stride(1),
            **expand,
        )

    return add_lora


add_lora = make_add_lora()
