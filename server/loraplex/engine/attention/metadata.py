"""The attention contract: what the model runner builds once per step and every backend reads.

The model runs on one packed row: ``T`` tokens of many sequences concatenated, with per-token
positions. :class:`AttentionMetadata` says, for that row, where each new key/value goes in the
paged cache and which cached keys each query sees; an :data:`Attend` backend (``sdpa.py``, the
reference; ``triton.py``) turns it into the attention output. Neither the runner nor a backend
imports the other: the runner sets the step's metadata on ``paged.FORWARD`` and the registered
hook (``paged.py``) hands it to the backend chosen at start (``select.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from loraplex.engine.attention.block_tables import SequenceTables


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


@dataclass(frozen=True)
class Variant:
    """What one layer asks of attention beyond ``softmax(scale·q·kᵀ + causal)·v``: the
    arguments transformers passes the registered function (from the model's config, never
    its name). Every backend implements all of them; the default is plain causal attention.

    window: a sliding window of W keys: the query at position p sees keys ``p - W < j <= p``
        (transformers' ``sliding_window_overlay``).
    softcap: the scaled logits become ``softcap·tanh(logit / softcap)`` (Gemma 2's
        ``attn_logit_softcapping``), before the mask.
    sinks: [H] one logit per query head that joins every softmax's denominator and attends to
        nothing (gpt-oss's ``s_aux``): ``p_j = exp(s_j) / (Σ_i exp(s_i) + exp(sink_h))``.
    """

    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None


PLAIN = Variant()

# (q [H, T, D], k [T, H_kv, D], v, key_cache, value_cache, metadata, scale, variant)
#   -> out [T, H, D]
Attend = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        AttentionMetadata,
        float | None,
        Variant,
    ],
    torch.Tensor,
]
