"""``needs_triton``: skip a test, with the reason, where Triton kernels cannot run here."""

from __future__ import annotations

import functools

import pytest
import torch

from loraplex.triton_support import triton_installed, triton_runs_on


@functools.cache
def triton_problem() -> str | None:
    """Why Triton kernels cannot run here (None: they can), found by running a tiny one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not triton_installed():
        return "triton is not installed (pip install -e '.[dev]')"
    if not triton_runs_on(device):
        return "no CUDA device and TRITON_INTERPRET is not set"
    from triton_probe import probe

    try:
        probe(device)
    except Exception as exc:  # any failure of the probe is the reason to skip
        return f"a trivial Triton kernel fails here ({exc!r}); triton 3.6 needs numpy<2.4"
    return None


needs_triton = pytest.mark.skipif(triton_problem() is not None, reason=str(triton_problem()))
triton_tests = [pytest.mark.triton, needs_triton]
