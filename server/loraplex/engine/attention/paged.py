"""Paged attention for any transformers decoder, registered through ``AttentionInterface``.

Every attention layer of every architecture calls :func:`paged_attention`, which

1. writes this step's keys/values into the layer's paged cache at ``slot_mapping``, and
2. attends each sequence's queries to its own cached keys, causally, through the backend
   chosen at start (``select.py``: ``sdpa.py`` the reference, ``triton.py`` in place).

Per-step metadata (``metadata.py``) is built once by the model runner and read here through
:data:`FORWARD`, so the runner and the backends never import each other.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface

from loraplex.engine.attention.metadata import Attend, AttentionMetadata
from loraplex.engine.attention.sdpa import sdpa_attend

ATTN_IMPLEMENTATION = "loraplex_paged"


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


FORWARD = ForwardContext()


def register_paged_attention() -> str:
    """Register :func:`paged_attention` with transformers (idempotent); returns its name.

    No mask function is registered for this name, so transformers builds no attention mask:
    causality and sequence boundaries come from :class:`AttentionMetadata` instead.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
    return ATTN_IMPLEMENTATION
