"""A model's layer structure by its config, as transformers derives it for its caches and
masks (``get_layer_types_and_kwargs``): which layers attend, and through which window."""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.cache_utils import get_layer_types_and_kwargs

ATTENTION_LAYERS = frozenset({"full_attention", "sliding_attention"})
NO_ATTENTION_LAYERS = frozenset({"moe", "mlp"})  # layers of an MLP or MoE block only

__all__ = [
    "ATTENTION_LAYERS",
    "NO_ATTENTION_LAYERS",
    "layer_types",
    "layer_windows",
    "uniform_window",
]


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each decoder layer's type as transformers derives it for its caches (``layer_types`` of
    the config, else from ``sliding_window`` / ``attention_chunk_size``); MLP/MoE-only layers
    keep their own name here (transformers calls them ``dummy``)."""
    text = config.get_text_config(decoder=True)
    declared = getattr(text, "layer_types", None)
    derived, _ = get_layer_types_and_kwargs(text)
    if declared is not None and len(declared) == len(derived):
        return [
            d if d in NO_ATTENTION_LAYERS else t for d, t in zip(declared, derived, strict=True)
        ]
    return list(derived)


def layer_windows(config: PretrainedConfig) -> list[int | None]:
    """Each layer's sliding window by the config (None: full attention), as transformers
    derives it for its caches and masks."""
    types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return [
        kw.get("sliding_window") if kind == "sliding_attention" else None
        for kind, kw in zip(types, kwargs, strict=True)
    ]


def uniform_window(config: PretrainedConfig) -> int | None:
    """The window every attention layer shares (then a block that left it can be freed for
    all layers at once), or None: a full-attention layer, or windows that differ."""
    attending = [
        window
        for kind, window in zip(layer_types(config), layer_windows(config), strict=True)
        if kind in ATTENTION_LAYERS
    ]
    windows = set(attending)
    return windows.pop() if len(windows) == 1 and None not in windows else None
