"""Checked PEFT adapter files -> per-module ``(A, B, scale)`` in host memory, and mixes of them.

An adapter's update of module m is ``scale_m · B_m · A_m`` with ``A_m`` [r_m, in],
``B_m`` [out, r_m] and ``scale_m`` from the config (``PeftConfig.scale_of``). Only folders that
passed :func:`~loraplex.adapters.folder_check.check_folder` are built, so names, ranks and
shapes are already known to fit the base model here.

A weighted mix ``Σ_i w_i · s_i · B_i · A_i = B · A`` is one adapter of concatenated rank:
``A = [A_1; A_2; …]`` ([Σr_i, in]) and ``B = [w_1·s_1·B_1, w_2·s_2·B_2, …]`` ([out, Σr_i]),
scale 1. This equals PEFT's ``add_weighted_adapter(..., combination_type="cat")``; no new kernel
is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.adapters.card import adapter_key
from loraplex.adapters.folder_check import CheckedFolder, check_folder
from loraplex.adapters.param_targets import Shape, to_expert_weights
from loraplex.adapters.rules import Limits
from loraplex.adapters.safetensors_check import check_values, split_key

MIX_PREFIX = "+mix-"  # "+" starts no valid adapter name

__all__ = [
    "LoRAAdapter",
    "LoRAWeights",
    "build_adapter",
    "combine",
    "load_adapter",
    "mix_key",
    "pinned",
]


@dataclass(frozen=True)
class LoRAWeights:
    """One module's update: ``delta = scale · B @ A``; a [r, in], b [out, r]. For a parameter
    of E experts (``param_targets.py``): a [E, r, in], b [E, out, r], expert e's update
    ``scale · B[e] @ A[e]``.

    ``b`` is kept column-major (its memory is Bᵀ's rows, the slot tables' layout), so that
    loading a slot copies contiguous memory instead of transposing.
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "b", self.b.mT.contiguous().mT)

    @property
    def rank(self) -> int:
        return self.a.shape[-2]


@dataclass(frozen=True)
class LoRAAdapter:
    """Weights in host memory: name, content hash (sha256 of the weights file) and per-module
    weights. What the config says of it (rank, alpha, targets) lives on its card."""

    name: str
    version: str
    modules: dict[str, LoRAWeights]

    @property
    def key(self) -> str:
        if self.name.startswith(MIX_PREFIX):  # a combination is identified by its parts already
            return self.name
        return adapter_key(self.name, self.version)

    @property
    def max_rank(self) -> int:
        return max(w.rank for w in self.modules.values())


def pinned(adapter: LoRAAdapter) -> LoRAAdapter:
    """``adapter`` with its tensors copied into pinned (page-locked) host memory, which a CUDA
    device reads by DMA without the host waiting. B is pinned as Bᵀ, so it stays column-major.
    Needs a CUDA build of torch and a device (``pin_memory`` raises without one)."""
    modules = {
        name: LoRAWeights(w.a.pin_memory(), w.b.mT.pin_memory().mT, w.scale)
        for name, w in adapter.modules.items()
    }
    return dataclasses.replace(adapter, modules=modules)


def build_adapter(
    name: str, checked: CheckedFolder, dtype: torch.dtype = torch.float32
) -> LoRAAdapter:
    """Pair the checked tensors into per-module ``(A, B, scale)``; registration passes the
    weights its checks already read, so the file is not read again."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    if checked.weights is None:
        raise ValueError(f"adapter {name!r}: its weights were checked by header only, not read")
    experts: dict[str, int] = {}
    for key, tensor in checked.weights.tensors.items():
        module, ab = split_key(key)
        if module in checked.weights.parameters:  # a MoE expert tensor or a router
            path, count = checked.weights.parameters[module]
            module, experts[path] = path, count
        pairs.setdefault(module, {})[ab] = tensor.to(dtype)
    modules: dict[str, LoRAWeights] = {}
    for module, ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        if module in experts:
            a, b = to_expert_weights(a, b, experts[module])
        modules[module] = LoRAWeights(a, b, checked.config.scale_of(module))
    return LoRAAdapter(name=name, version=checked.version, modules=modules)


def load_adapter(
    name: str,
    folder: str | Path,
    module_shapes: Mapping[str, Shape],
    dtype: torch.dtype = torch.float32,
    limits: Limits | None = None,
    served_model: str = "",
) -> LoRAAdapter:
    """Check a PEFT adapter folder against the base model's projections and read it into host
    memory (one read of the weights file)."""
    checked = check_folder(Path(folder), limits or Limits(), served_model, module_shapes)
    return build_adapter(name, checked, dtype)


def mix_key(parts: list[tuple[str, float]]) -> str:
    """Identity of a mix: the component keys (name@sha) and their weights."""
    text = ";".join(f"{key}*{weight!r}" for key, weight in parts)
    return f"{MIX_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def combine(parts: list[tuple[LoRAAdapter, float]]) -> LoRAAdapter:
    """One adapter equal to ``Σ w_i · ΔW_i`` on every module any part targets."""
    modules: dict[str, LoRAWeights] = {}
    names = sorted({m for adapter, _ in parts for m in adapter.modules})
    for name in names:
        pieces = [(a.modules[name], w) for a, w in parts if name in a.modules]
        lora_a = torch.cat([p.a for p, _ in pieces], dim=-2)  # ranks: A's rows, B's columns
        lora_b = torch.cat([p.b * (w * p.scale) for p, w in pieces], dim=-1)
        check_values(f"{name}.lora_B (the mix's weight x scale x B)", lora_b, 1.0)
        modules[name] = LoRAWeights(lora_a, lora_b, 1.0)
    key = mix_key([(a.key, w) for a, w in parts])
    return LoRAAdapter(name=key, version=key.removeprefix(MIX_PREFIX), modules=modules)
