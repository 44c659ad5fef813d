"""Tiny random models and PEFT adapters built inside the tests (no hub, seconds on a CPU)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 96
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_SEVEN = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]

# The C add_lora kernel is built with the system compiler; without one, its tests skip.
HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace tokenizer over words ``t0 .. t95``; ``t1`` is EOS."""
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t1", unk_token="t0")


def model_config(arch: str):
    common = {"vocab_size": VOCAB, "eos_token_id": 1, "bos_token_id": 1}
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )


def save_tiny_model(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(arch))
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def save_adapter(model_dir: Path, out: Path, seed: int, **lora: object) -> Path:
    """A PEFT LoRA with random A and B (``init_lora_weights=False``) so it changes the output."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
    peft_model.save_pretrained(out)
    return out


def naive_add_lora(y, x, lora_a, lora_b, row_slots: list[int]) -> torch.Tensor:
    """The add_lora oracle, one row at a time: ``y[t] + (A[s_t] @ x[t]) @ Bt[s_t]``."""
    out = y.clone()
    for t, slot in enumerate(row_slots):
        if slot >= 0:
            out[t] += (lora_a[slot] @ x[t]) @ lora_b[slot]
    return out
