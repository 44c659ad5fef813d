"""A one-program Triton kernel with a data-dependent loop bound: if it runs, the kernels can."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _count_kernel(bound_ptr, out_ptr):
    total = 0
    for _ in range(0, tl.load(bound_ptr)):
        total += 1
    tl.store(out_ptr, total)


def probe(device: torch.device) -> None:
    out = torch.zeros(1, dtype=torch.int32, device=device)
    _count_kernel[(1,)](torch.tensor([3], dtype=torch.int32, device=device), out)
    if int(out.item()) != 3:
        raise RuntimeError(f"counted {int(out.item())} iterations, not 3")
