"""Paged attention for any transformers decoder, registered through ``AttentionInterface``.

The model runs on one packed row: ``T`` tokens of many sequences concatenated, with per-token
positions. Every attention layer of every architecture calls :func:`paged_attention`, which

1. writes this step's keys/values into the layer's paged cache at ``slot_mapping``, and
2. attends each sequence's queries to its own cached keys, causally.

Masked key positions contribute exactly zero in every backend: a block handed to a new owner
keeps its previous owner's rows (possibly inf/NaN), and ``0 * NaN`` is NaN, so a backend never
multiplies a masked row away, it never reads it: the Triton kernel's loads are masked, and the
reference gathers masked positions from the *null row*, the last row of every layer's cache,
which the runner reserves (a block past the pool that nothing writes, all zeros).

Step 2 is the backend's, chosen once per model (:func:`select_attention`): the reference,
:func:`sdpa_attend`, attends decode sequences (one query each) in one batched SDPA call over keys
gathered through their block tables and prefill chunks with one SDPA call each; the Triton
backend (``triton_attention``) reads keys in place in one launch for all of them. Per-step
metadata is built once by the model runner (:class:`AttentionMetadata`) and read here through
:data:`FORWARD`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from loraplex.config import ATTENTION_BACKENDS
from loraplex.engine.attention.block_tables import SequenceTables
from loraplex.triton_support import require_triton, triton_installed

ATTN_IMPLEMENTATION = "loraplex_paged"


@dataclass
class PrefillChunk:
    """One sequence fed more than one token this step (or any chunk with earlier context).

    ``q_start:q_end`` are its rows in the packed batch; ``context_len`` keys (positions
    ``0..context_len-1``) are visible, the last ``q_end - q_start`` of them are this chunk's.
    ``cache_rows`` [context_len] are the cache rows of those keys; ``None`` when the chunk is the
    whole context (no earlier tokens), so the fresh keys are used without reading the cache.
    """

    q_start: int
    q_end: int
    context_len: int
    cache_rows: torch.Tensor | None


@dataclass
class AttentionMetadata:
    """Everything attention needs for one step, shared by all layers.

    slot_mapping: [T] cache row (``block * block_size + offset``) of every packed token.
    decode_rows: [D] packed rows of decode tokens (one query each, attended in one batch).
    decode_cache_rows: [D, L] cache rows of each decode sequence's keys, padded to L.
    decode_mask: [D, 1, 1, L] True where a key is real (not padding).
    prefills: the other sequences, one SDPA call each.
    sequences: every sequence's query rows, length and block table (read in place by the
        Triton backend).
    """

    slot_mapping: torch.Tensor
    decode_rows: torch.Tensor | None
    decode_cache_rows: torch.Tensor | None
    decode_mask: torch.Tensor | None
    prefills: list[PrefillChunk]
    sequences: SequenceTables | None = None


# (q [H, T, D], k [T, H_kv, D], v, key_cache, value_cache, metadata, scale) -> out [T, H, D]
Attend = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        AttentionMetadata,
        float | None,
    ],
    torch.Tensor,
]


class ForwardContext(threading.local):
    """Per-step state read by the registered attention function (set by the model runner).

    Thread-local, so two engines in one process (tests) never see each other's step.

    ``kv_caches[layer_idx]`` is ``(key_cache, value_cache)``, each [num_blocks*block_size, H_kv, D].
    ``attend`` is the model's attention backend.
    """

    def __init__(self) -> None:
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.metadata: AttentionMetadata | None = None
        self.attend: Attend = sdpa_attend


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, H_kv, T, D] (RoPE applied) -> output [1, T, H, D]."""
    meta = FORWARD.metadata
    if meta is None:
        raise RuntimeError("paged_attention called outside a loraplex forward")
    if kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        raise NotImplementedError("softcap and sliding-window attention are not supported yet")
    key_cache, value_cache = FORWARD.kv_caches[module.layer_idx]
    q, k, v = query[0], key[0].transpose(0, 1), value[0].transpose(0, 1)  # q [H,T,D]; k,v [T,Hkv,D]
    key_cache.index_copy_(0, meta.slot_mapping, k)
    value_cache.index_copy_(0, meta.slot_mapping, v)
    return FORWARD.attend(q, k, v, key_cache, value_cache, meta, scaling).unsqueeze(0), None


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


FORWARD = ForwardContext()


def select_attention(backend: str, device: torch.device) -> tuple[str, Attend]:
    """(name, backend) for ``--attention-backend``: ``torch`` is SDPA (the reference and the
    CPU default), ``triton`` the paged Triton kernel (CUDA, or the CPU under Triton's
    interpreter), ``auto`` triton on CUDA when it is installed, else torch."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend must be one of {ATTENTION_BACKENDS}")
    if backend == "auto" and not (device.type == "cuda" and triton_installed()):
        backend = "torch"
    if backend == "torch":
        return "torch", sdpa_attend
    require_triton(device, "--attention-backend triton")
    from loraplex.engine.attention.triton import triton_attend  # triton is optional

    return "triton", triton_attend


def register_paged_attention() -> str:
    """Register :func:`paged_attention` with transformers (idempotent); returns its name.

    No mask function is registered for this name, so transformers builds no attention mask:
    causality and sequence boundaries come from :class:`AttentionMetadata` instead.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
    return ATTN_IMPLEMENTATION
