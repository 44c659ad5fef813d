"""Choose the ``add_lora`` backend once per model, from the config, device and dtype."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from loraplex.lora.ops.cpu_ops import MAX_RANK, KernelBuildError, load
from loraplex.lora.ops.torch_ops import AddLoRA
from loraplex.lora.ops.torch_ops import add_lora as torch_add_lora

log = logging.getLogger(__name__)


def select_add_lora(
    kernel: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, max_rank: int
) -> tuple[str, AddLoRA]:
    """(name, op) of the backend every LoRA layer of one model will call.

    ``torch`` is the reference (any device and dtype). ``cpu`` is the C kernel, for float32 on
    the CPU and slot ranks up to ``cpu_ops.MAX_RANK``; asked for explicitly where it cannot
    run, that is an error. ``auto`` takes the C kernel where it applies and builds, else the
    reference (with a warning if the build failed).
    """
    if kernel not in ("auto", "torch", "cpu"):
        raise ValueError(f"unknown LoRA kernel {kernel!r}: expected auto, torch or cpu")
    if kernel == "torch":
        return "torch", torch_add_lora
    if device.type != "cpu" or dtype != torch.float32 or max_rank > MAX_RANK:
        if kernel == "cpu":
            raise ValueError(
                f"the cpu LoRA kernel runs float32 on the CPU with ranks up to {MAX_RANK}, "
                f"not {dtype} on {device} with rank {max_rank}"
            )
        return "torch", torch_add_lora
    try:
        return "cpu", load(cache_dir)
    except KernelBuildError as exc:
        if kernel == "cpu":
            raise
        log.warning("using the torch add_lora: %s", exc)
        return "torch", torch_add_lora
