"""LoRA on parameters (PEFT's ``target_parameters``): where PEFT saves it and what it must hold.

The base model offers two kinds of targets (``module_shapes``, built by ``lora/manager.py``):

- a projection (Linear / Conv1D): ``module name -> (in, out)``;
- a parameter: ``parameter path -> (E, in, out)``: a fused MoE expert tensor
  (``...experts.gate_up_proj`` [E, 2I, H] or ``...experts.down_proj`` [E, H, I]: E experts) or a
  router's weight (``...gate.weight`` [E, H]: one matrix, E = 1).

PEFT wraps every targeted parameter in a ``lora.ParamWrapper`` whose ``lora_A`` is
``[r·E, in]`` (expert ``e``'s A is rows ``e·r .. e·r + r - 1``) and ``lora_B`` ``[out, r·E]``
(expert ``e``'s B is columns ``j·E + e``); the update of expert ``e`` is
``scale · B_e · A_e`` (PEFT ``ParamWrapper.get_delta_weight``). Several targeted parameters of
one module nest, the first in the module's registration order innermost, so a module with k
targeted parameters saves the i-th (0-based) under ``<module>`` + ``.base_layer`` x (k - 1 - i).
A targeted Linear weight (``q_proj.weight``) is plain LoRA on that projection.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from loraplex.adapters.peft_config import PeftConfig

Shape = tuple[int, ...]  # (in, out) for a projection, (E, in, out) for a parameter

__all__ = ["Shape", "expected_shapes", "is_parameter", "parameter_keys", "to_expert_weights"]


def is_parameter(shape: Shape) -> bool:
    return len(shape) == 3


def parameter_keys(config: PeftConfig, shapes: Mapping[str, Shape]) -> dict[str, str]:
    """PEFT's module name in the weights file -> the parameter path it adapts, for every
    parameter of the base model that ``config.target_parameters`` names (``shapes`` lists a
    module's parameters in registration order, as PEFT visits them)."""
    per_module: dict[str, list[str]] = {}
    for path, shape in shapes.items():
        if is_parameter(shape) and config.targets_parameter(path):
            per_module.setdefault(path.rpartition(".")[0], []).append(path)
    keys: dict[str, str] = {}
    for module, paths in per_module.items():
        for i, path in enumerate(paths):
            keys[module + ".base_layer" * (len(paths) - 1 - i)] = path
    return keys


def expected_shapes(shape: Shape, rank: int) -> tuple[list[int], list[int]]:
    """(lora_A, lora_B) shapes PEFT saves for a target of ``shape`` at rank ``rank``."""
    if is_parameter(shape):
        experts, fan_in, fan_out = shape
        return [rank * experts, fan_in], [fan_out, rank * experts]
    fan_in, fan_out = shape
    return [rank, fan_in], [fan_out, rank]


def to_expert_weights(
    a: torch.Tensor, b: torch.Tensor, experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's ``lora_A`` [r·E, in] and ``lora_B`` [out, r·E] -> per-expert A [E, r, in] and
    B [E, out, r], so that expert e's update is ``B[e] @ A[e]``."""
    rank = a.shape[0] // experts
    per_a = a.reshape(experts, rank, a.shape[1])
    per_b = b.reshape(b.shape[0], rank, experts).permute(2, 0, 1)
    return per_a.contiguous(), per_b
