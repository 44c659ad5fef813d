"""add_lora on the CPU: the C kernel (built by ``cpu_build.py``), loaded with ctypes.

x and y are float32; the slot tables float32, bfloat16 or float16 (widened as they are read,
summed in float32). Only each slot's real rank is read when the metadata carries
``slot_ranks``.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.lora.ops.cpu_build import FLAG_SETS, KernelBuildError, build
from loraplex.lora.ops.meta import LoRAMeta
from loraplex.lora.ops.torch_ops import AddLoRA

SYMBOL = "loraplex_add_lora"
F16C_SYMBOL = "loraplex_add_lora_f16c"
# The table element types the kernel reads, by its `kind` codes.
TABLE_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# The kernel keeps ``8 x rank`` floats on each thread's stack; past this, use the torch op.
MAX_RANK = 1024
# A slot fed at least this many rows (a prefill chunk) goes through two BLAS matmuls instead
# of the kernel: the kernel streams A and B once per 8 rows, which is right for decode (a row
# or two per adapter) but at 32 rows a slot BLAS is ~1.3x faster and at 64 ~1.7x (one thread,
# the default model's seven projections; bench/NOTES.md).
GEMM_ROWS = 32
# The op's two refusals: tensors it cannot read, and metadata that does not fit them.
BAD_TENSORS = (
    "add_lora (cpu kernel): float32 CPU rows, dense rows and tables (float32, bfloat16 or "
    "float16, both alike)"
)
BAD_META = "add_lora (cpu kernel): the metadata does not fit these tensors"


@dataclass(frozen=True)
class _Tables:
    """A slot-table pair checked once: CPU, dense, ``[S, R, in]`` and ``[S, R, out]``, of one
    of TABLE_KINDS' dtypes (``kind``)."""

    a: weakref.ref
    b: weakref.ref
    slots: int
    rank: int
    fan_in: int
    fan_out: int
    kind: int


def _check_tables(lora_a: torch.Tensor, lora_b: torch.Tensor) -> _Tables:
    if (
        lora_a.dtype not in TABLE_KINDS
        or lora_b.dtype != lora_a.dtype
        or any(t.device.type != "cpu" for t in (lora_a, lora_b))
        or not (lora_a.is_contiguous() and lora_b.is_contiguous())
        or lora_a.dim() != 3
        or lora_b.dim() != 3
        or lora_a.shape[:2] != lora_b.shape[:2]
        or lora_a.shape[1] > MAX_RANK
    ):
        raise ValueError(BAD_TENSORS)
    slots, rank, fan_in = lora_a.shape
    kind = TABLE_KINDS[lora_a.dtype]
    a, b = weakref.ref(lora_a), weakref.ref(lora_b)
    return _Tables(a, b, slots, rank, fan_in, lora_b.shape[2], kind)


def _check_meta(meta: LoRAMeta, slots: int, rank: int) -> None:
    """Slot ends that are int32, one per slot, ascending from 0 and ending at the adapter rows;
    slot ranks (if any) int32, one per slot, each in ``[0, rank]`` (the tables' rank)."""
    ranks = meta.slot_ranks
    if ranks is not None and (
        ranks.dtype != torch.int32
        or ranks.device.type != "cpu"
        or ranks.shape != (slots,)
        or not ranks.is_contiguous()
        or int(ranks.min()) < 0
        or int(ranks.max()) > rank
    ):
        raise ValueError(BAD_META)
    ends = meta.group_ends
    if (
        ends.dtype != torch.int32
        or ends.device.type != "cpu"
        or ends.dim() != 1
        or ends.numel() != slots
        or int(ends[-1]) != meta.num_lora_rows
        or int(ends[0]) < 0
        or not bool((ends[1:] >= ends[:-1]).all())
    ):
        raise ValueError(BAD_META)


@dataclass(frozen=True)
class _Split:
    """One step's rows split between the kernel and BLAS. ``ranks``: the ranks the kernel
    reads ([S] int32; a slot given to BLAS reads as 0, which the kernel skips; None: every slot
    at the tables' rank); ``gemm``: (slot, first row, end row, rank) of the slots BLAS takes;
    ``kernel``: whether any row is left for the kernel."""

    ranks: torch.Tensor | None
    gemm: list[tuple[int, int, int, int]]
    kernel: bool


def _split(meta: LoRAMeta, rank: int, gemm_rows: int = GEMM_ROWS) -> _Split:
    """Give the slots fed at least ``gemm_rows`` rows to BLAS (checked metadata only)."""
    ends = meta.group_ends.tolist()
    ranks = None if meta.slot_ranks is None else meta.slot_ranks.tolist()
    gemm, kernel = [], False
    for slot, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        slot_rank = rank if ranks is None else ranks[slot]
        if end == start or slot_rank == 0:
            continue
        if end - start >= gemm_rows:
            gemm.append((slot, start, end, slot_rank))
        else:
            kernel = True
    if not gemm:
        return _Split(meta.slot_ranks, [], kernel)
    kernel_ranks = torch.tensor(ranks or [rank] * len(ends), dtype=torch.int32)
    kernel_ranks[[slot for slot, *_ in gemm]] = 0
    return _Split(kernel_ranks, gemm, kernel)


def f16_in_hardware(path: Path) -> bool:
    """Whether the kernel library at ``path`` widens float16 tables with F16C instructions."""
    return bool(getattr(ctypes.CDLL(str(path)), F16C_SYMBOL)())


def load(cache_dir: Path, flag_sets: tuple[tuple[str, ...], ...] = FLAG_SETS) -> AddLoRA:
    """Build (or reuse) the kernel and return an ``add_lora`` with the reference signature.

    The kernel reads raw memory, so whatever it is given must be checked; but a decode step
    makes hundreds of calls, where Python checks cost more than the kernel's arithmetic (about
    60 us a call, measured in the engine's forward). So the invariant parts are checked once:
    each slot-table pair when first seen (kept by identity, while it lives) and the step's
    metadata once per step (its ``slot_ranks`` are read then: they must not change during the
    step); each call checks only x and y.
    """
    path = build(cache_dir, flag_sets)
    try:
        kernel = getattr(ctypes.CDLL(str(path)), SYMBOL)
    except (OSError, AttributeError) as exc:  # e.g. its OpenMP runtime is missing here
        raise KernelBuildError(f"could not load the add_lora kernel {path}: {exc}") from exc
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    i32 = ctypes.c_int32
    kernel.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i32, i32]
    kernel.restype = None
    tables_of: dict[int, _Tables] = {}
    # The last metadata that passed, the (slots, rank) of the tables it passed for, and its
    # split between the kernel and the matmuls.
    checked_meta: LoRAMeta | None = None
    checked_for = (0, 0)
    split = _Split(None, [], True)

    def tables(lora_a: torch.Tensor, lora_b: torch.Tensor) -> _Tables:
        known = tables_of.get(id(lora_a))
        if known is not None and known.a() is lora_a and known.b() is lora_b:
            return known
        known = tables_of[id(lora_a)] = _check_tables(lora_a, lora_b)
        weakref.finalize(lora_a, tables_of.pop, id(lora_a), None)
        return known

    def add_lora(
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        meta: LoRAMeta,
    ) -> None:
        """``torch_ops.add_lora``'s math and shapes; float32 CPU rows with dense columns;
        tables in float32, bfloat16 or float16 (summed in float32)."""
        nonlocal checked_meta, checked_for, split
        t = tables(lora_a, lora_b)
        if checked_meta is not meta or checked_for != (t.slots, t.rank):
            _check_meta(meta, t.slots, t.rank)
            split = _split(meta, t.rank)
            checked_meta, checked_for = meta, (t.slots, t.rank)
        if x.dim() != 2 or y.dim() != 2:
            raise ValueError("add_lora (cpu kernel): x and y must be [rows, features]")
        if x.stride(-1) != 1:
            x = x.contiguous()
        (x_rows, fan_in), (y_rows, fan_out) = x.shape, y.shape
        if (
            x.dtype is not torch.float32
            or y.dtype is not torch.float32
            or not (x.is_cpu and y.is_cpu)
            or y.stride(-1) != 1
            or (fan_in, fan_out) != (t.fan_in, t.fan_out)
        ):
            raise ValueError(BAD_TENSORS)
        if meta.num_lora_rows > min(x_rows, y_rows):
            raise ValueError(BAD_META)
        for slot, start, end, rank in split.gemm:  # y_s += (x_s · A_sᵀ) · (scale·B_s)ᵀ
            a, b = lora_a[slot, :rank].float(), lora_b[slot, :rank].float()
            y[start:end].addmm_(x[start:end] @ a.T, b)
        if not split.kernel:
            return
        # ctypes drops the GIL for the call, so the API thread keeps serving meanwhile.
        kernel(
            x.data_ptr(),
            y.data_ptr(),
            lora_a.data_ptr(),
            lora_b.data_ptr(),
            meta.group_ends.data_ptr(),
            None if split.ranks is None else split.ranks.data_ptr(),
            t.slots,
            t.fan_in,
            t.fan_out,
            t.rank,
            x.stride(0),
            y.stride(0),
            t.kind,
            torch.get_num_threads(),
        )

    return add_lora
