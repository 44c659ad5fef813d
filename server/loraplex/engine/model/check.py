"""Refuse at start what the engine cannot run: a model never starts and then fails requests.

Two checks, both generic (the config's layer structure and what the model does, never its name):

1. the layer structure transformers itself derives for caching (``get_layer_types_and_kwargs``):
   every layer is full attention, sliding-window attention, or has no attention (an MLP/MoE-only
   layer); recurrent, convolutional, linear-attention, chunked or KV-sharing layers are refused;
2. a probe forward of a few tokens through the real backends, at start: every attention layer
   must attend through the registered paged-attention function (a model that computes its own
   attention, e.g. with ALiBi, would mix the packed sequences and ignore the KV cache), and
   nothing it asks of attention may be missing (the attention function raises naming it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig

from loraplex.engine.attention.block_tables import build_sequence_tables
from loraplex.engine.attention.metadata import Attend, AttentionMetadata, PrefillChunk
from loraplex.engine.attention.paged import FORWARD
from loraplex.engine.model.layers import (
    ATTENTION_LAYERS,
    NO_ATTENTION_LAYERS,
    layer_types,
    layer_windows,
)

if TYPE_CHECKING:
    from loraplex.engine.runner.model_runner import ModelRunner

__all__ = ["UnsupportedModelError", "check_config", "check_model"]


class UnsupportedModelError(ValueError):
    """The model needs something the engine does not implement; ``serve`` stops with this."""

    def __init__(self, model: str, feature: str) -> None:
        super().__init__(f"model {model!r} cannot be served: {feature}")
        self.model, self.feature = model, feature


def check_config(config: PretrainedConfig, model: str) -> list[int]:
    """The indices of the attention layers; refuses what the paged cache cannot hold."""
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(model, "encoder-decoder models are not supported")
    text = config.get_text_config(decoder=True)
    try:  # the paged cache has one shape for every layer
        heads = getattr(text, "num_attention_heads", None)
        getattr(text, "num_key_value_heads", None), getattr(text, "head_dim", None)
    except Exception as exc:  # transformers refuses a global value for per-layer shapes
        raise UnsupportedModelError(
            model, f"layers with attention shapes of their own ({type(exc).__name__})"
        ) from exc
    if heads is None:
        raise UnsupportedModelError(
            model, "its config declares no attention heads (num_attention_heads): a recurrent "
            "model, not an attention decoder"
        )  # fmt: skip
    modes = getattr(text, "kv_sharing_modes", None) or []
    if "reuse" in modes:
        raise UnsupportedModelError(
            model, "layers that reuse another layer's keys and values (kv_sharing_modes)"
        )
    attending = []
    for index, kind in enumerate(layer_types(config)):
        if kind in ATTENTION_LAYERS:
            attending.append(index)
        elif kind not in NO_ATTENTION_LAYERS and kind != "dummy":
            raise UnsupportedModelError(
                model, f"layer {index} is a {kind!r} layer (supported: full and sliding-window "
                "attention, and layers without attention)"
            )  # fmt: skip
    return attending


def probe(
    model: torch.nn.Module,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    attend: Attend,
    scratch_block: int,
    block_size: int,
) -> dict[int, int]:
    """Run a forward of ``min(2, block_size)`` tokens whose keys land in the scratch block;
    returns how many times each layer (by index) attended through the registered function."""
    tokens = min(2, block_size)
    rows = torch.arange(tokens) + scratch_block * block_size
    device = kv_caches[0][0].device
    tables = build_sequence_tables([(tokens, tokens, [scratch_block])], block_size, device)
    meta = AttentionMetadata(
        slot_mapping=rows.to(device),
        decode_rows=None,
        decode_cache_rows=None,
        decode_mask=None,
        prefills=[PrefillChunk(0, tokens, tokens, None)],
        sequences=tables,
    )
    layer_of = {id(k): i for i, (k, _) in enumerate(kv_caches)}
    seen: dict[int, int] = {}

    def recording(q, k, v, key_cache, value_cache, metadata, scaling, variant):
        layer = layer_of[id(key_cache)]
        seen[layer] = seen.get(layer, 0) + 1
        return attend(q, k, v, key_cache, value_cache, metadata, scaling, variant)

    FORWARD.kv_caches, FORWARD.metadata, FORWARD.attend = kv_caches, meta, recording
    FORWARD.windows = layer_windows(model.config)
    ids = torch.ones(1, tokens, dtype=torch.long, device=device)
    positions = torch.arange(tokens, device=device)[None, :]
    try:
        with torch.inference_mode():
            model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1)
    finally:
        FORWARD.metadata, FORWARD.attend = None, attend
    return seen


def check_model(runner: ModelRunner, model: str) -> None:
    """Refuse ``runner``'s model unless every part of it runs here (at start, before any
    request; ``serve`` stops with the :class:`UnsupportedModelError`)."""
    attending = check_config(runner.model.config, model)
    try:
        seen = probe(
            runner.model,
            runner.kv_caches,
            runner.attend,
            runner.scratch_block,
            runner.layout.block_size,
        )
    except NotImplementedError as exc:
        raise UnsupportedModelError(model, str(exc)) from exc
    except Exception as exc:
        raise UnsupportedModelError(
            model, f"its forward fails on loraplex's paged attention ({type(exc).__name__}: {exc})"
        ) from exc
    twice = sorted(layer for layer, calls in seen.items() if calls > 1)
    if twice:
        raise UnsupportedModelError(
            model,
            f"layer {twice[0]} ({type(runner.model).__name__}) attends {seen[twice[0]]} times "
            "per forward (e.g. differential attention over two halves of the values): its "
            "layer's KV cache can hold only one set of values",
        )
    missing = sorted(set(attending) - set(seen))
    if missing:
        raise UnsupportedModelError(
            model,
            f"layer {missing[0]} ({type(runner.model).__name__}) computes its attention itself "
            "instead of through transformers' attention interface (e.g. ALiBi), so it would "
            "ignore the paged KV cache and mix the sequences of a batch",
        )
