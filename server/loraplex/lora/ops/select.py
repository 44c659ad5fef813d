"""Choose the ``add_lora`` backend once per model, from the config, device and dtype."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from loraplex.lora.ops.cpu_ops import MAX_RANK, KernelBuildError, load
from loraplex.lora.ops.torch_ops import AddLoRA
from loraplex.lora.ops.torch_ops import add_lora as torch_add_lora
from loraplex.triton_support import require_triton, triton_installed

log = logging.getLogger(__name__)


def select_add_lora(
    kernel: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, max_rank: int
) -> tuple[str, AddLoRA]:
    """(name, op) of the backend every LoRA layer of one model will call.

    ``torch`` is the reference (any device and dtype). ``cpu`` is the C kernel, for float32 on
    the CPU and slot ranks up to ``cpu_ops.MAX_RANK``; ``triton`` the Triton kernels, on CUDA
    (or the CPU under Triton's interpreter). Asked for explicitly where it cannot run, a kernel
    is an error. ``auto`` takes triton on CUDA (when installed), the C kernel where it applies
    and builds, else the reference (with a warning if the build failed).
    """
    if kernel not in ("auto", "torch", "cpu", "triton"):
        raise ValueError(f"unknown LoRA kernel {kernel!r}: expected auto, torch, cpu or triton")
    if kernel == "torch":
        return "torch", torch_add_lora
    if kernel == "triton" or (kernel == "auto" and device.type == "cuda" and triton_installed()):
        require_triton(device, "--lora-kernel triton")
        from loraplex.lora.ops.triton_ops import add_lora as triton_add_lora  # triton is optional

        return "triton", triton_add_lora
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
