"""Paged attention in Triton: every sequence of a step (decode and prefill chunks) in one launch.

A program owns one query tile of one sequence and one KV head: ``BLOCK_Q`` consecutive query
tokens times the ``GROUP`` query heads that share the KV head (GQA packing: the keys and values
are read once for the whole group), so its tile has ``BLOCK_Q * GROUP_PAD`` rows. Keys and
values are read in place from the paged cache through the sequence's block table; softmax is
online (running max and sum, in base 2); with ``NUM_SPLITS > 1`` each split of the key range
writes a partial result that :func:`combine_splits_kernel` merges.

Variants (``metadata.Variant``): a sliding ``window`` (runtime; a huge value for none) both
masks each query's keys (``p - window < j <= p``) and starts the tile's key range at the first
key any of its queries sees, so keys that left the window are never loaded (their blocks may
belong to someone else by now); ``SOFTCAP`` turns the scaled logits into
``softcap·tanh(logit / softcap)``; ``HAS_SINKS`` adds each head's sink ``exp(sink_h)`` to the
softmax denominator when the result is normalized.

The query-tile grid is fixed from host bounds, ``T // BLOCK_Q + B`` tiles: sequence ``b``'s
tiles start at ``query_starts[b] // BLOCK_Q + b`` (increasing in ``b``, and never short of its
``cdiv(q_len, BLOCK_Q)`` tiles), found by a branch-free binary search of ``SEARCH_STEPS``
(``B.bit_length()``) steps; spare tiles return at once.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _find_sequence(query_starts_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr, STEPS: tl.constexpr):
    """The last sequence b whose first tile ``query_starts[b] // BLOCK_Q + b`` is <= tile."""
    lo = tile * 0  # an int32 scalar, so every step keeps one type
    hi = lo + num_seqs - 1
    for _ in tl.static_range(STEPS):
        mid = (lo + hi + 1) // 2
        ok = tl.load(query_starts_ptr + mid) // BLOCK_Q + mid <= tile
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    return lo


@triton.jit
def paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_ptr,
    stats_ptr,
    query_starts_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    sinks_ptr,
    num_seqs,
    scale,
    softcap,
    window,
    q_stride_t,
    q_stride_h,
    cache_stride_row,
    cache_stride_h,
    out_stride_t,
    out_stride_h,
    table_stride,
    part_stride_split,
    part_stride_t,
    part_stride_h,
    stats_stride_split,
    stats_stride_t,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    SOFTCAP: tl.constexpr,
    HAS_SINKS: tl.constexpr,
):
    """Grid: (T // BLOCK_Q + B, kv heads, NUM_SPLITS). q: [T, H, D] rows (any strides);
    caches: [rows, H_kv, D]; out: [T, H, D]. With splits, ``part`` [S, T, H, D] gets the
    unnormalized sums and ``stats`` [S, T, H, 2] the running max (base 2) and sum."""
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_sequence(query_starts_ptr, num_seqs, tile, BLOCK_Q, SEARCH_STEPS)
    q_start = tl.load(query_starts_ptr + seq)
    q_len = tl.load(query_starts_ptr + seq + 1) - q_start
    first_token = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if first_token >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # keys cached before this chunk

    offs = tl.arange(0, BLOCK_Q * GROUP_PAD)
    token = first_token + offs // GROUP_PAD
    head = kv_head * GROUP + offs % GROUP_PAD
    row_ok = (token < q_len) & (offs % GROUP_PAD < GROUP)
    query_pos = context + token
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_rows = (q_start + token).to(tl.int64) * q_stride_t + head * q_stride_h
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Keys this tile may see end after its last query and start at its first query's window;
    # this split takes one slice of them.
    kv_end = tl.minimum(seq_len, context + first_token + BLOCK_Q)
    kv_first = tl.maximum(context + first_token - window + 1, 0)
    per_split = tl.cdiv(tl.cdiv(kv_end - kv_first, NUM_SPLITS), BLOCK_N) * BLOCK_N
    kv_start = kv_first + split * per_split
    kv_stop = tl.minimum(kv_start + per_split, kv_end)

    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, BLOCK_D], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * table_stride
    head_offset = kv_head * cache_stride_h
    qk_scale = scale * LOG2E  # exp(x) = exp2(x * log2(e))
    for n0 in range(kv_start, kv_stop, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        key_ok = pos < kv_stop
        block = tl.load(table + pos // BLOCK_SIZE, mask=key_ok, other=0)
        rows = (block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE) * cache_stride_row
        k_mask = d_ok[:, None] & key_ok[None, :]
        v_mask = key_ok[:, None] & d_ok[None, :]
        k_tile = k_cache_ptr + head_offset + rows[None, :] + offs_d[:, None]  # [D, N]: Kᵀ
        v_tile = v_cache_ptr + head_offset + rows[:, None] + offs_d[None, :]  # [N, D]
        k = tl.load(k_tile, mask=k_mask, other=0.0)
        v = tl.load(v_tile, mask=v_mask, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION)
        if SOFTCAP:  # softcap·tanh(x / softcap), tanh(y) = 1 - 2 / (exp(2y) + 1)
            s = (1.0 - 2.0 / (tl.exp(s * (2.0 * scale / softcap)) + 1.0)) * (softcap * LOG2E)
        else:
            s = s * qk_scale
        visible = key_ok[None, :] & (pos[None, :] <= query_pos[:, None])
        visible = visible & (pos[None, :] > query_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key seen yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    rows_t = (q_start + token).to(tl.int64)
    mask = row_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        if HAS_SINKS:  # the sink joins the denominator: rescale to max(m, sink) first
            sink = tl.load(sinks_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * LOG2E
            m_all = tl.maximum(m_i, sink)
            rescale = tl.exp2(m_i - m_all)
            l_i = l_i * rescale + tl.exp2(sink - m_all)
            acc = acc * rescale[:, None]
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        dest = out_ptr + rows_t[:, None] * out_stride_t + head[:, None] * out_stride_h
        tl.store(dest + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        part = part_ptr + split * part_stride_split + rows_t * part_stride_t + head * part_stride_h
        tl.store(part[:, None] + offs_d[None, :], acc, mask=mask)
        stats = stats_ptr + split * stats_stride_split + rows_t * stats_stride_t + head * 2
        tl.store(stats, m_i, mask=row_ok)
        tl.store(stats + 1, l_i, mask=row_ok)


@triton.jit
def combine_splits_kernel(
    part_ptr,
    stats_ptr,
    out_ptr,
    sinks_ptr,
    part_stride_split,
    part_stride_t,
    part_stride_h,
    stats_stride_split,
    stats_stride_t,
    out_stride_t,
    out_stride_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HAS_SINKS: tl.constexpr,
):
    """Grid: (T, H). ``out = Σ_s 2^(m_s - m) acc_s / (Σ_s 2^(m_s - m) l_s [+ 2^(sink - m)])``
    with m = max_s m_s (and the head's sink, in base 2)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, NUM_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    stats = stats_ptr + offs_s * stats_stride_split + t * stats_stride_t + h * 2
    m = tl.load(stats)
    l_s = tl.load(stats + 1)
    m_max = tl.max(m, 0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + h).to(tl.float32) * LOG2E
        m_max = tl.maximum(m_max, sink)
    weight = tl.exp2(m - m_max)  # splits that saw no key have m = -inf: weight 0
    part = part_ptr + offs_s[:, None] * part_stride_split + t * part_stride_t + h * part_stride_h
    acc = tl.load(part + offs_d[None, :], mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    denominator = tl.sum(l_s * weight, 0)
    if HAS_SINKS:
        denominator += tl.exp2(sink - m_max)
    out = tl.sum(acc * weight[:, None], 0) / denominator
    dest = out_ptr + t * out_stride_t + h * out_stride_h + offs_d
    tl.store(dest, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


__all__ = ["combine_splits_kernel", "paged_attention_kernel", "triton"]
