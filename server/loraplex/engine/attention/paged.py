"""Paged attention for any transformers decoder, registered through ``AttentionInterface``.

Every attention layer of every architecture calls :func:`paged_attention`, which

1. writes this step's keys/values into the layer's paged cache at ``slot_mapping``, and
2. attends each sequence's queries to its own cached keys, causally, through the backend
   chosen at start (``select.py``: ``sdpa.py`` the reference, ``triton.py`` in place), with
   the layer's :class:`~loraplex.engine.attention.metadata.Variant`: what transformers passes
   (``scaling``, ``sliding_window``, ``softcap``, ``s_aux`` sinks). An argument that would change
   the result and that no backend implements raises ``NotImplementedError`` naming it, which the
   start-up probe (``model/check.py``) turns into a refusal to serve the model.

Per-step metadata (``metadata.py``) is built once by the model runner and read here through
:data:`FORWARD`, so the runner and the backends never import each other.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface

from loraplex.engine.attention.metadata import PLAIN, Attend, AttentionMetadata, Variant
from loraplex.engine.attention.sdpa import sdpa_attend

ATTN_IMPLEMENTATION = "loraplex_paged"
# Arguments transformers passes that do not change inference (dropout is training-only).
IGNORED = frozenset(
    {"dropout", "use_cache", "position_ids", "cache_position", "output_attentions",
     "output_router_logits", "encoder_hidden_states", "head_mask", "is_causal"}
)  # fmt: skip


class ForwardContext(threading.local):
    """Per-step state read by the registered attention function (set by the model runner).

    Thread-local, so two engines in one process (tests) never see each other's step.

    ``kv_caches[layer_idx]`` is ``(key_cache, value_cache)``, each [num_blocks*block_size, H_kv, D].
    ``attend`` is the model's attention backend. ``windows[layer_idx]``: the layer's sliding
    window by its config (``model/check.py``), for models that put the window only into the
    mask transformers builds (which this function never gets) and not into its arguments.
    """

    def __init__(self) -> None:
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.metadata: AttentionMetadata | None = None
        self.attend: Attend = sdpa_attend
        self.windows: list[int | None] = []


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
    layer = module.layer_idx
    variant = variant_of(kwargs, FORWARD.windows[layer] if layer < len(FORWARD.windows) else None)
    key_cache, value_cache = FORWARD.kv_caches[layer]
    q, k, v = query[0], key[0].transpose(0, 1), value[0].transpose(0, 1)  # q [H,T,D]; k,v [T,Hkv,D]
    if k.shape[1:] != key_cache.shape[1:] or v.shape[1:] != key_cache.shape[1:]:
        raise NotImplementedError(
            f"attention with keys {list(k.shape[1:])} and values {list(v.shape[1:])} per token "
            f"(heads, dim) where the paged cache, sized from the config, holds "
            f"{list(key_cache.shape[1:])} for both (e.g. multi-head latent attention)"
        )
    key_cache.index_copy_(0, meta.slot_mapping, k)
    value_cache.index_copy_(0, meta.slot_mapping, v)
    out = FORWARD.attend(q, k, v, key_cache, value_cache, meta, scaling, variant)
    return out.unsqueeze(0), None


def variant_of(kwargs: dict[str, object], config_window: int | None = None) -> Variant:
    """The layer's attention variant from transformers' arguments (a ``sliding_window`` they
    lack comes from the config: ``config_window``); anything else that would change the result
    is refused (``NotImplementedError`` naming it)."""
    if kwargs.get("is_causal") is False:
        raise NotImplementedError("bidirectional attention (is_causal=False) is not supported")
    if kwargs.get("encoder_hidden_states") is not None:
        raise NotImplementedError("cross-attention (encoder_hidden_states) is not supported")
    for name, value in kwargs.items():
        known = name in IGNORED or name in ("sliding_window", "softcap", "s_aux")
        if not known and value is not None and value is not False:
            raise NotImplementedError(
                f"the attention argument {name!r} ({type(value).__name__}) is not supported"
            )
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    window = kwargs.get("sliding_window")
    window = config_window if window is None else window
    if window is None and softcap is None and sinks is None:
        return PLAIN
    if window is not None and (not isinstance(window, int) or window < 1):
        raise NotImplementedError(f"sliding_window={window!r}: expected a positive integer")
    if sinks is not None and not isinstance(sinks, torch.Tensor):
        raise NotImplementedError(f"attention sinks of type {type(sinks).__name__}")
    return Variant(window, float(softcap) if softcap is not None else None, sinks)


FORWARD = ForwardContext()


def register_paged_attention() -> str:
    """Register :func:`paged_attention` with transformers (idempotent); returns its name.

    No mask function is registered for this name, so transformers builds no attention mask:
    causality and sequence boundaries come from :class:`AttentionMetadata` instead.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
    return ATTN_IMPLEMENTATION
