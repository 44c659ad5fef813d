"""Per-step LoRA metadata: which packed rows use which adapter slot, built once per step.

The model runner orders the packed batch so that rows of the same slot are contiguous, slots
ascending, and base-model rows (no adapter) last. Every LoRA layer of the forward then reads
the same :class:`LoRAMeta`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Padding every slot's rows to the largest group is cheap for decode steps (few rows per slot)
# and wasteful for prefill; past this many padded rows per real row, use grouped matmuls.
MAX_PADDING_FACTOR = 2


@dataclass(frozen=True)
class LoRAMeta:
    """Shapes: T packed rows, n = ``num_lora_rows`` of them use an adapter, S slots, P pad.

    num_lora_rows: rows ``[0, n)`` use an adapter (slot-sorted); rows ``[n, T)`` are base-only.
        A captured CUDA graph passes an upper bound (T) instead: the Triton kernels, the only
        ones captured, read the row counts from ``group_ends`` on the device.
    group_ends: [S] int32, cumulative end row of each slot's rows (``grouped`` strategy).
    gather_rows: [S*P] int64, packed row feeding each padded position (``padded`` strategy).
    scatter_rows: [n] int64, padded position of each adapter row (``padded`` strategy).
    padded_rows: P, rows per slot in the padded layout (0 for ``grouped``).
    slot_ranks: [S] int32, the real rank of each slot's adapter (0: empty), on the device;
        kernels that stream only real ranks read it (the slot tables are padded to R). ``None``:
        every slot is read up to R (always exact: padded rank rows are zero).
    """

    num_lora_rows: int
    group_ends: torch.Tensor
    gather_rows: torch.Tensor | None
    scatter_rows: torch.Tensor | None
    padded_rows: int
    slot_ranks: torch.Tensor | None = None

    @property
    def strategy(self) -> str:
        return "padded" if self.padded_rows else "grouped"


def build_lora_meta(
    row_slots: list[int], num_slots: int, device: torch.device | str = "cpu"
) -> LoRAMeta | None:
    """Build the metadata from each packed row's slot (-1 = base), or ``None`` if no row uses one.

    ``row_slots`` must list adapter rows first in ascending slot order, then the -1 rows.
    """
    counts = [0] * num_slots
    n = 0
    previous = 0
    for slot in row_slots:
        if slot < 0:
            previous = num_slots  # every later row must be base-only too
            continue
        if slot < previous or slot >= num_slots:
            raise ValueError("rows must be sorted by slot with base rows last")
        previous = slot
        counts[slot] += 1
        n += 1
    if n == 0:
        return None
    ends = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    pad = max(counts)
    if pad * num_slots > MAX_PADDING_FACTOR * n + num_slots:
        return LoRAMeta(n, ends.to(device, torch.int32), None, None, 0)
    starts = ends - torch.tensor(counts)
    slots = torch.tensor(row_slots[:n], dtype=torch.int64)
    scatter = slots * pad + torch.arange(n) - starts[slots]
    gather = torch.zeros(num_slots * pad, dtype=torch.int64)
    gather[scatter] = torch.arange(n)
    return LoRAMeta(n, ends.to(device, torch.int32), gather.to(device), scatter.to(device), pad)
