"""The reference attention backend (SDPA), and the CPU default.

Decode sequences (one query each) are attended in one batched call over keys gathered through
their block tables; prefill chunks with one call each. Plain and sliding-window layers run
``F.scaled_dot_product_attention`` (the window is part of the boolean mask); softcapped layers
and layers with sinks run the same math written out (:func:`eager`, as transformers' eager
attention computes it), since SDPA has neither.

Masked key positions contribute exactly zero: a block handed to a new owner keeps its previous
owner's rows (possibly inf/NaN), and ``0 * NaN`` is NaN, so a masked row is never multiplied
away, it is never read: masked positions gather the *null row*, the last row of every layer's
cache, which the runner reserves (a block past the pool that nothing writes, all zeros). Keys
that left a sliding window are masked the same way, so their blocks may be reused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraplex.engine.attention.metadata import PLAIN, AttentionMetadata, Variant


def eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    variant: Variant,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, n, D], k/v [B, H, L, D] (heads already matched), mask broadcastable to
    [B, H, n, L] (True: visible), sinks broadcastable to [B, H, n, 1] -> [B, H, n, D]:
    ``softmax(cap(scale·q·kᵀ) | mask, sinks)·v``, the softmax in float32 (transformers' eager)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if variant.softcap is not None:
        scores = torch.tanh(scores / variant.softcap) * variant.softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        logits = torch.cat([scores, sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)], -1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits.float(), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores.float(), dim=-1)
    return torch.matmul(probs.to(v.dtype), v)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    variant: Variant,
    sinks: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """SDPA (GQA: q [B, H, n, D] over k/v [B, H_kv, L, D]) unless the variant needs the
    written-out math; ``causal`` with no mask: plain causal over n == L."""
    if variant.softcap is None and sinks is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale,
            enable_gqa=True,
        )  # fmt: skip
    if mask is None and causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return eager(q, k, v, mask, scale, variant, sinks)


def chunk_mask(
    n: int, context: int, window: int | None, device: torch.device
) -> torch.Tensor | None:
    """[n, context] visibility of a chunk of n queries ending at position ``context - 1``
    (query i at p = context - n + i sees keys ``p - window < j <= p``); None: plain causal
    over exactly the chunk."""
    if context == n and window is None:
        return None
    pos = torch.arange(context - n, context, device=device)[:, None]
    keys = torch.arange(context, device=device)[None, :]
    visible = keys <= pos
    return visible if window is None else visible & (keys > pos - window)


def sdpa_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float | None,
    variant: Variant = PLAIN,
) -> torch.Tensor:
    """The reference backend: q [H, T, D], this step's k/v [T, H_kv, D], caches already
    written -> out [T, H, D], with the layer's :class:`Variant`."""
    out = torch.empty_like(q)  # [H, T, D]
    heads, kv_heads, dim = q.shape[0], key_cache.shape[1], q.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    if meta.decode_rows is not None:
        # One query per sequence: fold the query heads that share a KV head into the query
        # axis ([Dn, H_kv, H/H_kv, D]), so SDPA never materializes repeated keys (GQA).
        rows, cache_rows, mask = meta.decode_rows, meta.decode_cache_rows, meta.decode_mask
        if variant.window is not None:  # the query sits at position length - 1
            keys = torch.arange(mask.shape[-1], device=mask.device)
            lengths = mask.sum(-1, keepdim=True)  # [Dn, 1, 1, 1]
            mask = mask & (keys > lengths - 1 - variant.window)
        dq = q.index_select(1, rows).transpose(0, 1).reshape(-1, kv_heads, group, dim)
        # Masked positions (padding, a block's stale tail, keys out of the window) read the
        # null row: select, never multiply (0 * NaN from a block's previous owner would
        # poison this sequence).
        null_row = key_cache.shape[0] - 1
        cache_rows = torch.where(mask[:, 0, 0, :], cache_rows, null_row)
        flat = cache_rows.reshape(-1)  # index_select is much faster than advanced indexing
        dk = key_cache.index_select(0, flat).view(*cache_rows.shape, kv_heads, dim).transpose(1, 2)
        dv = (
            value_cache.index_select(0, flat).view(*cache_rows.shape, kv_heads, dim).transpose(1, 2)
        )
        sinks = None if variant.sinks is None else variant.sinks.view(1, kv_heads, group, 1)
        o = _attend(dq, dk, dv, mask, scale, variant, sinks)
        out.index_copy_(1, rows, o.reshape(-1, heads, dim).transpose(0, 1))
    sinks = None if variant.sinks is None else variant.sinks.view(1, heads, 1, 1)
    for chunk in meta.prefills:
        cq = q[:, chunk.q_start : chunk.q_end].unsqueeze(0)  # [1, H, n, D]
        n = chunk.q_end - chunk.q_start
        if chunk.cache_rows is None:
            ck, cv = k[chunk.q_start : chunk.q_end], v[chunk.q_start : chunk.q_end]
        else:
            rows = chunk.cache_rows
            if variant.window is not None:  # keys out of every query's window: the null row
                first = chunk.context_len - n - variant.window + 1
                keys = torch.arange(rows.shape[0], device=rows.device)
                rows = torch.where(keys >= first, rows, key_cache.shape[0] - 1)
            ck, cv = key_cache.index_select(0, rows), value_cache.index_select(0, rows)
        ck, cv = ck.transpose(0, 1).unsqueeze(0), cv.transpose(0, 1).unsqueeze(0)
        mask = chunk_mask(n, chunk.context_len, variant.window, q.device)
        out[:, chunk.q_start : chunk.q_end] = _attend(
            cq, ck, cv, mask, scale, variant, sinks, True
        )[0]
    return out.transpose(0, 1)
