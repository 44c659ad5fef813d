"""The attention backend, chosen once per model (``--attention-backend``), never per layer."""

from __future__ import annotations

import torch

from loraplex.config import ATTENTION_BACKENDS
from loraplex.engine.attention.metadata import Attend
from loraplex.engine.attention.sdpa import sdpa_attend
from loraplex.triton_support import require_triton, triton_installed


def select_attention(backend: str, device: torch.device) -> tuple[str, Attend]:
    """(name, backend) for ``--attention-backend``: ``torch`` is SDPA (the reference and the
    CPU default), ``triton`` the paged Triton kernel (CUDA, or the CPU under Triton's
    interpreter), ``auto`` triton on CUDA when it is installed, else torch."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend must be one of {ATTENTION_BACKENDS}")
    if backend == "auto" and not (device.type == "cuda" and triton_installed()):
        backend = "torch"
    if backend == "torch":
        return "torch", sdpa_attend
    require_triton(device, "--attention-backend triton")
    from loraplex.engine.attention.triton import triton_attend  # triton is optional

    return "triton", triton_attend
