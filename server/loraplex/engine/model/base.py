"""The base model as the runner gets it: the weights (float, quantized at load, or saved
quantized; random with ``--load-format dummy``), its tokenizer, and their weight format."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from loraplex.config import ModelConfig
from loraplex.engine.model.dummy import build_dummy_model, dummy_tokenizer
from loraplex.engine.model.loading import load_pretrained
from loraplex.engine.model.quantization import QuantFormat, resolve_quantization
from loraplex.engine.model.quantized_loading import (
    describe_weights,
    load_quantized,
    quantize_in_place,
    settle,
    weight_bytes,
)

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """The frozen base: ``quantization`` None means float weights in the compute dtype;
    ``weight_bytes``: bytes by storage format (nf4, int8, float32 ...)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    quantization: QuantFormat | None
    weight_bytes: dict[str, int]


def load_base(
    path: str, config: ModelConfig, dtype: torch.dtype, device: torch.device, attn: str
) -> BaseModel:
    """Load ``path`` (or its dummy) on ``device``, computing in ``dtype``, in eval mode."""
    dummy = config.load_format == "dummy"
    # The weight format: --quantization, or the folder's own (dummy: the flag alone).
    quantization = resolve_quantization(config.quantization, None if dummy else path, device.type)
    if dummy:  # random weights of the folder's config, on the device
        model = build_dummy_model(path, dtype, device, attn)
        if quantization is not None:
            quantize_in_place(model, quantization, dtype)
        vocab = model.config.get_text_config().vocab_size
        tokenizer: PreTrainedTokenizerBase = dummy_tokenizer(path, vocab)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if quantization is None:
            model = load_pretrained(path, dtype, device, attn)
        else:
            model = load_quantized(path, dtype, device, attn, quantization)
    model.eval().requires_grad_(False)
    if quantization is not None:
        settle(model, dtype, device)
    sizes = weight_bytes(model)
    how = "" if quantization is None else f"{quantization.describe()}, "
    compute = str(dtype).removeprefix("torch.")
    log.info("base weights: %s (%scompute %s)", describe_weights(sizes), how, compute)
    return BaseModel(model, tokenizer, quantization, sizes)
