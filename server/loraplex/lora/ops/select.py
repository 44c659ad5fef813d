"""Choose the ``add_lora`` backend once per model, from the config, device and dtype."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from loraplex.lora.ops.cpu_build import KernelBuildError
from loraplex.lora.ops.cpu_ops import MAX_RANK, TABLE_KINDS, load
from loraplex.lora.ops.torch_ops import AddLoRA
from loraplex.lora.ops.torch_ops import add_lora as torch_add_lora
from loraplex.triton_support import require_triton, triton_installed

log = logging.getLogger(__name__)


def select_add_lora(
    kernel: str,
    device: torch.device,
    dtype: torch.dtype,
    cache_dir: Path,
    max_rank: int,
    table_dtype: torch.dtype | None = None,
) -> tuple[str, AddLoRA]:
    """(name, op) of the backend every LoRA layer of one model will call.

    ``dtype`` is the model's (x and y), ``table_dtype`` the slot tables' (``--lora-dtype``;
    None: the model's). ``torch`` is the reference (any device and dtypes). ``cpu`` is the C
    kernel, for a float32 model on the CPU with float32, bfloat16 or float16 tables and slot
    ranks up to ``cpu_ops.MAX_RANK``; ``triton`` the Triton kernels, on CUDA (or the CPU under
    Triton's interpreter), with tables in the model's dtype. Asked for explicitly where it
    cannot run, a kernel is an error. ``auto`` takes triton on CUDA (when installed and the
    tables are in the model's dtype), the C kernel where it applies and builds, else the
    reference (with a warning if the build failed).
    """
    if kernel not in ("auto", "torch", "cpu", "triton"):
        raise ValueError(f"unknown LoRA kernel {kernel!r}: expected auto, torch, cpu or triton")
    table_dtype = dtype if table_dtype is None else table_dtype
    if kernel == "torch":
        return "torch", torch_add_lora
    if kernel == "triton" and table_dtype != dtype:
        raise ValueError(
            f"the triton LoRA kernel needs slot tables in the model's dtype ({dtype}), not "
            f"{table_dtype}: use --lora-dtype auto"
        )
    if kernel == "triton" or (
        kernel == "auto" and device.type == "cuda" and triton_installed() and table_dtype == dtype
    ):
        require_triton(device, "--lora-kernel triton")
        from loraplex.lora.ops.triton_ops import add_lora as triton_add_lora  # triton is optional

        return "triton", triton_add_lora
    if (
        device.type != "cpu"
        or dtype != torch.float32
        or table_dtype not in TABLE_KINDS
        or max_rank > MAX_RANK
    ):
        if kernel == "cpu":
            raise ValueError(
                f"the cpu LoRA kernel runs float32 on the CPU (tables float32, bfloat16 or "
                f"float16) with ranks up to {MAX_RANK}, not {dtype} (tables {table_dtype}) on "
                f"{device} with rank {max_rank}"
            )
        return "torch", torch_add_lora
    try:
        return "cpu", load(cache_dir)
    except KernelBuildError as exc:
        if kernel == "cpu":
            raise
        log.warning("using the torch add_lora: %s", exc)
        return "torch", torch_add_lora
