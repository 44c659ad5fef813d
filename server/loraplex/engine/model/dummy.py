"""Random weights of a real shape (``--load-format dummy``, vLLM's name) and random adapters.

A machine with no model files (a lent GPU) can then be benchmarked at a real model's shape:
the base model comes from a config folder, or from the built-in Llama-3-8B-shaped config, with
transformers' own initialization run directly on the device (no host copy of the weights).
Adapters of any rank and target set are drawn for it just as quickly. Outputs are meaningless;
speed and memory are real.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from loraplex.adapters.weights import LoRAAdapter, LoRAWeights
from loraplex.paths import cache_root

DUMMY_MODEL_NAME = "dummy-llama-3-8b"
# Meta-Llama-3-8B's shapes (its config.json): 32 layers of 4096, GQA 32/8 heads of 128.
LLAMA_3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "tie_word_embeddings": False,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

log = logging.getLogger(__name__)


def builtin_dummy_folder() -> Path:
    """A cached folder holding only the built-in config (``--load-format dummy`` without
    ``--model``), written once through a temporary folder renamed into place."""
    target = cache_root() / "models" / DUMMY_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dummy-", dir=target.parent))
    try:
        LlamaConfig(**LLAMA_3_8B).save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_dummy_model(
    config: PretrainedConfig | str | Path,
    dtype: torch.dtype,
    device: torch.device,
    attn_implementation: str | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """The model of ``config`` (or a folder's config.json) with transformers' random init
    (normal(0, initializer_range) projections, unit norms), created on ``device`` in ``dtype``."""
    if not isinstance(config, PretrainedConfig):
        config = AutoConfig.from_pretrained(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    log.info("dummy weights: %.2fB parameters", sum(p.numel() for p in model.parameters()) / 1e9)
    return model


def dummy_tokenizer(folder: str | Path, vocab_size: int) -> PreTrainedTokenizerBase:
    """The folder's tokenizer if it has one, else a whitespace tokenizer over words ``t0 ..``
    (one per vocabulary id; ``t0`` doubles as unknown and EOS)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder)
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t0", unk_token="t0")


def _targeted(module: str, targets: tuple[str, ...]) -> bool:
    """PEFT's rule: a target names a module exactly or as its last dotted components."""
    return any(re.fullmatch(rf"(.*\.)?{re.escape(t)}", module) for t in targets)


def random_adapter(
    name: str,
    module_shapes: dict[str, tuple[int, ...]],
    rank: int,
    targets: tuple[str, ...] | list[str],
    seed: int,
    alpha: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> LoRAAdapter:
    """A LoRA of ``rank`` on every projection (name -> (in, out)) that ``targets`` names
    (parameter targets, name -> (E, in, out), are left out).

    ``A ~ N(0, 1/in)`` and ``B ~ N(0, 1/(100 r))``, so each update is a small perturbation of a
    transformers-initialized base (bf16 stays finite) yet changes the output. Drawn on
    ``device`` from a generator seeded with ``seed``: the same arguments give the same weights.
    """
    targets = tuple(targets)
    generator = torch.Generator(device).manual_seed(seed)
    modules: dict[str, LoRAWeights] = {}
    for module, shape in sorted(module_shapes.items()):
        if len(shape) != 2 or not _targeted(module, targets):
            continue
        fan_in, fan_out = shape
        a = torch.randn(rank, fan_in, generator=generator, device=device) * fan_in**-0.5
        b = torch.randn(fan_out, rank, generator=generator, device=device) * (100 * rank) ** -0.5
        modules[module] = LoRAWeights(a.to(dtype), b.to(dtype), (alpha or rank) / rank)
    if not modules:
        raise ValueError(f"no module of the model matches the targets {list(targets)}")
    return LoRAAdapter(name=name, version=f"random-r{rank}-seed{seed}", modules=modules)
