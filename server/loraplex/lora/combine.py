"""A weighted mix of adapters as one adapter of concatenated rank (the LoRA paper's remark).

``Σ_i w_i · s_i · B_i · A_i = B · A`` with ``A = [A_1; A_2; …]`` ([Σr_i, in]) and
``B = [w_1·s_1·B_1, w_2·s_2·B_2, …]`` ([out, Σr_i]), scale 1. This equals PEFT's
``add_weighted_adapter(..., combination_type="cat")``; no new kernel is needed.
"""

from __future__ import annotations

import hashlib

import torch

from loraplex.lora.adapter import LoRAAdapter, LoRAWeights


def mix_key(parts: list[tuple[str, float]]) -> str:
    """Identity of a mix: the component keys (name@sha) and their weights."""
    text = ";".join(f"{key}*{weight!r}" for key, weight in parts)
    return f"+mix-{hashlib.sha256(text.encode()).hexdigest()[:24]}"  # "+" is no valid name


def combine(parts: list[tuple[LoRAAdapter, float]]) -> LoRAAdapter:
    """One adapter equal to ``Σ w_i · ΔW_i`` on every module any part targets."""
    modules: dict[str, LoRAWeights] = {}
    names = sorted({m for adapter, _ in parts for m in adapter.modules})
    for name in names:
        pieces = [(a.modules[name], w) for a, w in parts if name in a.modules]
        lora_a = torch.cat([p.a for p, _ in pieces], dim=0)
        lora_b = torch.cat([p.b * (w * p.scale) for p, w in pieces], dim=1)
        modules[name] = LoRAWeights(lora_a, lora_b, 1.0)
    key = mix_key([(a.key, w) for a, w in parts])
    rank = max(w.rank for w in modules.values())
    targets = tuple(sorted({t for a, _ in parts for t in a.target_modules}))
    return LoRAAdapter(
        name=key,
        version=key.removeprefix("+mix-"),
        rank=rank,
        alpha=float(rank),
        target_modules=targets,
        modules=modules,
    )
