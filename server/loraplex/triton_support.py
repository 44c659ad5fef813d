"""Whether the Triton backends can run here, asked once when a backend is chosen.

Triton stays optional: nothing imports it until a Triton backend is chosen, and then through
:func:`require_triton`. Its kernels run on a CUDA device, or on the CPU under Triton's
interpreter (``TRITON_INTERPRET=1`` in the environment before triton is first imported), which
is how the tests check them without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

INTERPRET_VARIABLE = "TRITON_INTERPRET"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when Triton runs kernels in its interpreter (read now, never at import)."""
    return os.environ.get(INTERPRET_VARIABLE, "0") not in ("", "0")


def triton_runs_on(device: torch.device) -> bool:
    """Can Triton kernels run on ``device``: CUDA with triton installed, or the CPU under the
    interpreter."""
    if not triton_installed():
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def require_triton(device: torch.device, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (an option) when Triton cannot run on ``device``."""
    if not triton_installed():
        raise ValueError(f"{what} needs the triton package (pip install triton)")
    if not triton_runs_on(device):
        raise ValueError(
            f"{what} runs on a CUDA device (or on the CPU under Triton's interpreter, "
            f"{INTERPRET_VARIABLE}=1), not on {device}"
        )


def upcast_dots(dtype: torch.dtype) -> bool:
    """bf16 operands of ``tl.dot`` are multiplied as raw bit patterns by the interpreter, so
    there (only there) the kernels upcast them to float32 first."""
    return dtype == torch.bfloat16 and interpreting()
