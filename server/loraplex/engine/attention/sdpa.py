"""The reference attention backend (SDPA), and the CPU default.

Decode sequences (one query each) are attended in one batched SDPA call over keys gathered
through their block tables; prefill chunks with one SDPA call each.

Masked key positions contribute exactly zero: a block handed to a new owner keeps its previous
owner's rows (possibly inf/NaN), and ``0 * NaN`` is NaN, so a masked row is never multiplied
away, it is never read: masked positions gather the *null row*, the last row of every layer's
cache, which the runner reserves (a block past the pool that nothing writes, all zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraplex.engine.attention.metadata import AttentionMetadata


def sdpa_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float | None,
) -> torch.Tensor:
    """The reference backend (SDPA): q [H, T, D], this step's k/v [T, H_kv, D], caches already
    written -> out [T, H, D]."""
    out = torch.empty_like(q)  # [H, T, D]
    if meta.decode_rows is not None:
        # One query per sequence: fold the query heads that share a KV head into the query
        # axis ([Dn, H_kv, H/H_kv, D]), so SDPA never materializes repeated keys (GQA).
        rows, cache_rows = meta.decode_rows, meta.decode_cache_rows
        heads, kv_heads, dim = q.shape[0], key_cache.shape[1], q.shape[2]
        dq = q.index_select(1, rows).transpose(0, 1).reshape(-1, kv_heads, heads // kv_heads, dim)
        # Masked positions (padding, a block's stale tail) read the null row: select, never
        # multiply (0 * NaN from a block's previous owner would poison this sequence).
        null_row = key_cache.shape[0] - 1
        cache_rows = torch.where(meta.decode_mask[:, 0, 0, :], cache_rows, null_row)
        flat = cache_rows.reshape(-1)  # index_select is much faster than advanced indexing
        dk = key_cache.index_select(0, flat).view(*cache_rows.shape, kv_heads, dim).transpose(1, 2)
        dv = (
            value_cache.index_select(0, flat).view(*cache_rows.shape, kv_heads, dim).transpose(1, 2)
        )
        o = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=meta.decode_mask, scale=scaling)
        out.index_copy_(1, rows, o.reshape(-1, heads, dim).transpose(0, 1))
    for chunk in meta.prefills:
        cq = q[:, chunk.q_start : chunk.q_end].unsqueeze(0)  # [1, H, n, D]
        if chunk.cache_rows is None:
            ck, cv = k[chunk.q_start : chunk.q_end], v[chunk.q_start : chunk.q_end]
        else:
            ck = key_cache.index_select(0, chunk.cache_rows)
            cv = value_cache.index_select(0, chunk.cache_rows)
        ck, cv = ck.transpose(0, 1).unsqueeze(0), cv.transpose(0, 1).unsqueeze(0)
        n = chunk.q_end - chunk.q_start
        mask = None
        if chunk.context_len > n:  # query i sits at position context_len - n + i
            mask = torch.ones(n, chunk.context_len, dtype=torch.bool, device=q.device).tril(
                chunk.context_len - n
            )
        o = F.scaled_dot_product_attention(
            cq, ck, cv, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=True
        )
        out[:, chunk.q_start : chunk.q_end] = o[0]
    return out.transpose(0, 1)
