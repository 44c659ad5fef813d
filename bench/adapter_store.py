"""Random PEFT LoRA adapters written straight to an adapter store folder (fast for a thousand):
one folder per adapter with ``adapter_config.json`` and ``adapter_model.safetensors``, the
layout both loraplex's store and ``PeftModel.load_adapter`` read.

Only Llama-style decoders (``model.layers.N.self_attn.*_proj`` / ``mlp.*_proj``), which is what
the default model and the tests' tiny model are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
ALL_SEVEN = ATTENTION + MLP


@dataclass(frozen=True)
class AdapterSet:
    """``count`` adapters named ``{prefix}{i:0{width}d}``; adapter i has rank
    ``ranks[i % len(ranks)]`` on ``targets`` and ``lora_alpha = 2 * rank``."""

    prefix: str
    count: int
    ranks: tuple[int, ...]
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.count < 1 or not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"adapter set {self.prefix!r}: count and ranks must be positive")
        unknown = set(self.targets) - set(ALL_SEVEN)
        if unknown or not self.targets:
            raise ValueError(f"adapter set {self.prefix!r}: targets must be among {ALL_SEVEN}")

    @property
    def names(self) -> list[str]:
        width = len(str(self.count - 1))
        return [f"{self.prefix}{i:0{width}d}" for i in range(self.count)]

    def rank_of(self, i: int) -> int:
        return self.ranks[i % len(self.ranks)]

    @property
    def max_rank(self) -> int:
        return max(self.ranks[: self.count])

    def describe(self) -> str:
        ranks = "/".join(f"r{r}" for r in sorted(set(self.ranks)))
        where = "all seven" if set(self.targets) == set(ALL_SEVEN) else "+".join(self.targets)
        return f"{ranks}, {where}"


def projection_shapes(model_dir: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """(number of layers, target -> (in features, out features)) from ``config.json``."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    shapes = {
        "q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (q, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }  # fmt: skip
    return config["num_hidden_layers"], shapes


def write_adapter(
    folder: Path, model_dir: Path, rank: int, targets: Sequence[str], seed: int
) -> None:
    """A PEFT-format adapter with random A ``[r, in]`` and B ``[out, r]`` (N(0, 0.02^2), stored
    as float16, ``lora_alpha = 2r``, so scale 2): B non-zero, so it changes the output."""
    import torch
    from safetensors.torch import save_file

    layers, shapes = projection_shapes(model_dir)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            part = "mlp" if target in MLP else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{target}"
            fan_in, fan_out = shapes[target]
            a = torch.randn(rank, fan_in, generator=gen) * 0.02
            b = torch.randn(fan_out, rank, generator=gen) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = a.half()
            tensors[f"{prefix}.lora_B.weight"] = b.half()
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "lora_dropout": 0.0,
        "bias": "none",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))


def write_set(store: Path, model_dir: Path, adapters: AdapterSet, seed: int) -> list[str]:
    """Write every adapter of ``adapters`` into ``store`` (adapter i drawn with ``seed + i``)."""
    names = adapters.names
    for i, name in enumerate(names):
        write_adapter(store / name, model_dir, adapters.rank_of(i), adapters.targets, seed + i)
    return names
