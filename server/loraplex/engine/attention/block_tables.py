"""Per-sequence tables of one packed step, for attention kernels that read the paged cache in
place through block tables (built once per step with the rest of the batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceTables:
    """B sequences whose query rows are contiguous in the packed batch, in packed order.

    query_starts: [B + 1] int32, first packed row of each sequence's queries; the last is T.
    seq_lens: [B] int32, keys each sequence's last query sees (cached context + this chunk);
        query ``i`` of a chunk of ``n`` sits at position ``seq_len - n + i``.
    block_tables: [B, W] int32, physical cache block of each sequence's logical block ``j``
        (cache row ``block * block_size + position % block_size``); padded with block 0.
    block_size: tokens per cache block.
    max_query_len, max_seq_len: host-side bounds of this step (launch configuration).
    """

    query_starts: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    block_size: int
    max_query_len: int
    max_seq_len: int


def build_sequence_tables(
    chunks: list[tuple[int, int, list[int]]], block_size: int, device: torch.device
) -> SequenceTables:
    """``chunks``: (query rows, context length after this step, block table) per sequence."""
    starts = [0]
    lens: list[int] = []
    tables: list[list[int]] = []
    for rows, seq_len, block_table in chunks:
        used = -(-seq_len // block_size)
        if rows <= 0 or rows > seq_len or used > len(block_table):
            raise ValueError(f"a chunk of {rows} rows cannot end at {seq_len} in its blocks")
        starts.append(starts[-1] + rows)
        lens.append(seq_len)
        tables.append(block_table[:used])
    width = max(len(t) for t in tables)
    padded = [t + [0] * (width - len(t)) for t in tables]
    return SequenceTables(
        query_starts=torch.tensor(starts, dtype=torch.int32).to(device),
        seq_lens=torch.tensor(lens, dtype=torch.int32).to(device),
        block_tables=torch.tensor(padded, dtype=torch.int32).to(device),
        block_size=block_size,
        max_query_len=max(rows for rows, _, _ in chunks),
        max_seq_len=max(lens),
    )
