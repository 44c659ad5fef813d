"""Host tensors on transparent huge pages (CPU serving).

Why: a CPU decode step is bound by memory traffic. It streams every base weight once (540 MB
for the default model in float32, more than the L3), the slot tables of the step's adapters
and the KV rows of every sequence. On 4 KiB pages that is ~140k pages a step: the TLB covers
a few MB of them, so most cache lines of a new page wait for a page walk, and the hardware
stream prefetcher stops at every page boundary. On 2 MiB pages the same bytes are ~300 pages.

Linux hands out huge pages to anonymous memory marked ``MADV_HUGEPAGE`` when transparent huge
pages are ``always`` or ``madvise`` (the usual default; ``never`` turns them off), so the
tensors are moved into anonymous ``mmap`` arenas so marked; ``torch.frombuffer`` keeps each
arena alive for as long as a tensor views it. Where the kernel or Python cannot do this
(another OS, THP ``never``), nothing moves and the tensors stay where they are.
"""

from __future__ import annotations

import logging
import math
import mmap
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
ALIGN = 64  # every tensor starts on a cache line
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MIN_BYTES = 256 << 10  # smaller tensors (norms, biases) gain nothing: leave them be


def huge_pages_available() -> bool:
    """Whether marking memory ``MADV_HUGEPAGE`` gets huge pages here."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def huge_page_arena(nbytes: int) -> torch.Tensor:
    """A zeroed uint8 tensor of ``nbytes`` (rounded up to whole huge pages) in an anonymous
    mapping marked for huge pages. Pages are allocated on first touch, as with ``malloc``."""
    size = max(HUGE_PAGE, -(-nbytes // HUGE_PAGE) * HUGE_PAGE)
    arena = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(arena, dtype=torch.uint8)


def huge_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.zeros(shape, dtype)`` on huge pages when available (else a plain one)."""
    if not huge_pages_available():
        return torch.zeros(shape, dtype=dtype)
    numel = math.prod(shape)
    return huge_page_arena(numel * dtype.itemsize)[: numel * dtype.itemsize].view(dtype).view(shape)


def _movable(tensor: torch.Tensor | None) -> bool:
    return (
        tensor is not None
        and tensor.device.type == "cpu"
        and tensor.layout is torch.strided
        and not tensor.is_mkldnn
        and tensor.is_contiguous()
        and tensor.numel() * tensor.element_size() >= MIN_BYTES
    )


def move_to_huge_pages(module: torch.nn.Module) -> int:
    """Move ``module``'s large CPU parameters and buffers into one huge-page arena; returns
    the bytes moved (0 when huge pages are unavailable). Tensors that share storage (tied
    embeddings) stay shared. Values are unchanged; tensors are rebound in place, so call it
    before anything keeps references to the old ones (optimizers, prepacked copies).

    The small tensors left behind get copies of their own: loaded from a memory-mapped
    checkpoint, any one of them would keep the whole map alive, and with it every file page
    the load touched, resident beside the arena (the model's size again in RSS)."""
    if not huge_pages_available():
        return 0
    # (owner's table, name, the tensor's address before the move)
    slots: list[tuple[dict[str, torch.Tensor | None], str, int]] = []
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            slots += [(table, n, t.data_ptr()) for n, t in table.items() if _movable(t)]
    offsets: dict[int, int] = {}  # address before the move -> offset in the arena
    total = 0
    for table, name, ptr in slots:
        if ptr not in offsets:
            offsets[ptr] = total
            tensor = table[name]
            total += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    _own_small_tensors(module)
    if not total:
        return 0
    arena = huge_page_arena(total)
    moved: dict[int, torch.Tensor] = {}
    for table, name, ptr in slots:
        old = table[name]
        if ptr in moved:  # shared storage met again (tied weights)
            if old.data_ptr() == ptr and old.shape == moved[ptr].shape:  # not rebound yet
                _rebind(table, name, old, moved[ptr])
            continue
        nbytes = old.numel() * old.element_size()
        new = arena[offsets[ptr] : offsets[ptr] + nbytes].view(old.dtype).view(old.shape)
        new.copy_(old)
        moved[ptr] = new
        _rebind(table, name, old, new)
    log.info("moved %.0f MiB of weights onto huge pages", total / 2**20)
    return total


def _own_small_tensors(module: torch.nn.Module) -> None:
    """Give the CPU tensors too small to move a storage of their own (see above)."""
    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                small = tensor is not None and not _movable(tensor) and not tensor.is_mkldnn
                if small and tensor.device.type == "cpu" and tensor.layout is torch.strided:
                    _rebind(table, name, tensor, tensor.detach().clone())


def _rebind(table: dict[str, torch.Tensor | None], name: str, old: torch.Tensor, new: torch.Tensor):
    if isinstance(old, torch.nn.Parameter):
        old.data = new  # keeps the Parameter object (and its requires_grad)
    else:
        table[name] = new
