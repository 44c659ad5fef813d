"""The two Triton kernels of ``add_lora``: segmented shrink and expand over slot-sorted rows.

Rows of slot ``s`` are the contiguous range ``[ends[s-1], ends[s])`` of the packed batch
(``LoRAMeta.group_ends``); rows past the last end are base-only and never touched. Both grids are
fixed from host-side upper bounds (rows of the whole batch, the tables' padded rank), so one
launch serves any mix of adapters; a program whose slot is empty, whose rows start past its
slot's count, or whose rank tile starts past its slot's real rank returns at once. Each slot's
loads are masked to its real rank, so padded rank rows of the tables are never read.

shrink: ``buf[k, t, :r_s] = x[t, K_k] @ A[s_t, :r_s, K_k]ᵀ`` in float32, one partial sum per
        split ``k`` of the input features (split-K keeps small row counts busy on many SMs).
expand: ``y[t] = cast(y[t] + (Σ_k buf[k, t, :r_s]) @ Bt[s_t, :r_s])``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _slot_rows(ends_ptr, slot):
    """(first row, row count) of ``slot``'s contiguous segment."""
    start = tl.load(ends_ptr + tl.maximum(slot - 1, 0))
    start = tl.where(slot > 0, start, 0)
    return start, tl.load(ends_ptr + slot) - start


@triton.jit
def shrink_kernel(
    x_ptr,
    a_ptr,
    buf_ptr,
    ends_ptr,
    ranks_ptr,
    fan_in,
    x_row_stride,
    a_slot_stride,
    a_rank_stride,
    buf_split_stride,
    buf_row_stride,
    TABLE_RANK: tl.constexpr,
    HAS_RANKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid: (SPLIT_K * rank tiles * row tiles, slots)."""
    slot = tl.program_id(1)
    pid = tl.program_id(0)
    split = pid % SPLIT_K
    rank_tile = (pid // SPLIT_K) % tl.cdiv(TABLE_RANK, BLOCK_R)
    row_tile = pid // (SPLIT_K * tl.cdiv(TABLE_RANK, BLOCK_R))
    start, rows = _slot_rows(ends_ptr, slot)
    rank = tl.load(ranks_ptr + slot) if HAS_RANKS else TABLE_RANK
    if row_tile * BLOCK_M >= rows or rank_tile * BLOCK_R >= rank:
        return
    offs_m = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = rank_tile * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = offs_m < rows
    rank_ok = offs_r < rank
    x_rows = x_ptr + (start + offs_m)[:, None].to(tl.int64) * x_row_stride
    a_rows = a_ptr + slot.to(tl.int64) * a_slot_stride + offs_r[:, None] * a_rank_stride
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    k_start = split * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, fan_in)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        xt = tl.load(x_rows + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        at = tl.load(a_rows + offs_k[None, :], mask=rank_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:
            xt, at = xt.to(tl.float32), at.to(tl.float32)
        acc += tl.dot(xt, tl.trans(at), input_precision=PRECISION)
    out = (
        buf_ptr
        + split * buf_split_stride
        + (start + offs_m)[:, None].to(tl.int64) * (buf_row_stride)
    )
    tl.store(out + offs_r[None, :], acc, mask=row_ok[:, None] & rank_ok[None, :])


@triton.jit
def expand_kernel(
    buf_ptr,
    b_ptr,
    y_ptr,
    ends_ptr,
    ranks_ptr,
    fan_out,
    y_row_stride,
    b_slot_stride,
    b_rank_stride,
    buf_split_stride,
    buf_row_stride,
    TABLE_RANK: tl.constexpr,
    HAS_RANKS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid: (row tiles * column tiles, slots)."""
    slot = tl.program_id(1)
    pid = tl.program_id(0)
    col_tiles = tl.cdiv(fan_out, BLOCK_N)
    col_tile = pid % col_tiles
    row_tile = pid // col_tiles
    start, rows = _slot_rows(ends_ptr, slot)
    rank = tl.load(ranks_ptr + slot) if HAS_RANKS else TABLE_RANK
    if row_tile * BLOCK_M >= rows or rank <= 0:
        return
    offs_m = row_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = col_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < rows
    col_ok = offs_n < fan_out
    buf_rows = buf_ptr + (start + offs_m)[:, None].to(tl.int64) * buf_row_stride
    b_slot = b_ptr + slot.to(tl.int64) * b_slot_stride
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        rank_ok = offs_r < rank
        xa = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
        for split in tl.static_range(SPLIT_K):
            xa += tl.load(
                buf_rows + split * buf_split_stride + offs_r[None, :],
                mask=row_ok[:, None] & rank_ok[None, :],
                other=0.0,
            )
        bt = tl.load(
            b_slot + offs_r[:, None] * b_rank_stride + offs_n[None, :],
            mask=rank_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            acc += tl.dot(xa, bt.to(tl.float32), input_precision=PRECISION)
        else:
            acc += tl.dot(xa.to(bt.dtype), bt, input_precision=PRECISION)
    y_tile = y_ptr + (start + offs_m)[:, None].to(tl.int64) * y_row_stride + offs_n[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    y = tl.load(y_tile, mask=mask, other=0.0)
    tl.store(y_tile, (y.to(tl.float32) + acc).to(y.dtype), mask=mask)


__all__ = ["expand_kernel", "shrink_kernel", "triton"]
