"""The Triton attention backend: one launch per layer over every sequence of the step.

Imported only when ``--attention-backend triton`` is chosen (triton stays optional). It reads
keys and values in place from the paged cache through :class:`SequenceTables`, so nothing is
gathered; the registered attention function has already written this step's keys and values.
"""

from __future__ import annotations

import torch

from loraplex.engine.attention.block_tables import SequenceTables
from loraplex.engine.attention.metadata import PLAIN, AttentionMetadata, Variant
from loraplex.engine.attention.triton_kernels import (
    combine_splits_kernel,
    paged_attention_kernel,
    triton,
)
from loraplex.triton_support import upcast_dots

# Query-tile rows (tokens x packed heads): small for decode, where a sequence has one token.
DECODE_TILE_ROWS = 16
PREFILL_TILE_ROWS = 64
# Split the keys while fewer programs than this would be live, down to ~512 keys a split.
TARGET_PROGRAMS = 1024
MIN_KEYS_PER_SPLIT = 512
MAX_SPLITS = 16
MIN_DOT_DIM = 16  # every tl.dot dimension on real hardware
NO_WINDOW = 1 << 30  # the window of a full-attention layer: longer than any sequence


def choose_splits(programs: int, max_seq_len: int) -> int:
    """Powers of two while the grid stays under TARGET_PROGRAMS and splits stay long."""
    splits = 1
    while (
        splits < MAX_SPLITS
        and programs * splits * 2 <= TARGET_PROGRAMS
        and max_seq_len >= splits * 2 * MIN_KEYS_PER_SPLIT
    ):
        splits *= 2
    return splits


def kernel_constants(
    heads: int,
    kv_heads: int,
    dim: int,
    dtype: torch.dtype,
    tables: SequenceTables,
    rows: int,
    num_splits: int | None,
    block_n: int,
    variant: Variant = PLAIN,
) -> dict:
    """The compile-time arguments of the attention kernel for one step (``NUM_SPLITS`` chosen
    here unless forced)."""
    group = heads // kv_heads
    group_pad = triton.next_power_of_2(group)
    tile_rows = DECODE_TILE_ROWS if tables.max_query_len == 1 else PREFILL_TILE_ROWS
    block_q = max(1, tile_rows // group_pad)  # tiles hold >= 16 rows: tl.dot's minimum
    num_seqs = tables.seq_lens.shape[0]
    tiles = rows // block_q + num_seqs
    upcast = upcast_dots(dtype)
    return {
        "GROUP": group,
        "GROUP_PAD": group_pad,
        "BLOCK_Q": block_q,
        "HEAD_DIM": dim,
        "BLOCK_D": max(MIN_DOT_DIM, triton.next_power_of_2(dim)),
        "BLOCK_N": block_n,
        "BLOCK_SIZE": tables.block_size,
        "NUM_SPLITS": num_splits or choose_splits(tiles * kv_heads, tables.max_seq_len),
        "SEARCH_STEPS": num_seqs.bit_length(),
        "UPCAST": upcast,
        "PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32",
        "SOFTCAP": variant.softcap is not None,
        "HAS_SINKS": variant.sinks is not None,
    }


def make_triton_attend(num_splits: int | None = None, block_n: int = 64):
    """An attention backend (``metadata.Attend``); ``num_splits`` forces the
    split of the keys (tests), ``block_n`` the keys per inner step."""
    if block_n < MIN_DOT_DIM or block_n & (block_n - 1):
        raise ValueError(f"block_n={block_n}: tl.dot tiles must be powers of two >= 16")
    if num_splits is not None and (num_splits < 1 or num_splits & (num_splits - 1)):
        raise ValueError(f"num_splits={num_splits} must be a power of two")

    def triton_attend(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scaling: float | None,
        variant: Variant = PLAIN,
    ) -> torch.Tensor:
        """q [H, T, D] (any strides, D dense); caches [rows, H_kv, D] -> out [T, H, D]:
        ``softmax(q·Kᵀ·scale + causal) · V`` per sequence, keys at their cache rows, with the
        layer's variant (window, softcap, sinks)."""
        tables = meta.sequences
        if tables is None:
            raise ValueError("the triton attention backend needs the step's sequence tables")
        heads, rows, dim = q.shape
        kv_heads = key_cache.shape[1]
        if heads % kv_heads or q.stride(2) != 1 or not key_cache.is_contiguous():
            raise ValueError("attention (triton): q [H, T, D] with H a multiple of H_kv")
        if not value_cache.is_contiguous() or value_cache.shape != key_cache.shape:
            raise ValueError("attention (triton): keys and values must share one dense layout")
        consts = kernel_constants(
            heads, kv_heads, dim, q.dtype, tables, rows, num_splits, block_n, variant
        )
        sinks = variant.sinks if variant.sinks is not None else q  # unread without sinks
        if variant.sinks is not None and (sinks.shape != (heads,) or not sinks.is_contiguous()):
            raise ValueError(f"attention (triton): sinks must be [{heads}], got {sinks.shape}")
        splits, num_seqs = consts["NUM_SPLITS"], tables.seq_lens.shape[0]
        out = torch.empty(rows, heads, dim, dtype=q.dtype, device=q.device)
        part = stats = out  # unread with one split
        if splits > 1:
            part = torch.empty(splits, rows, heads, dim, dtype=torch.float32, device=q.device)
            stats = torch.empty(splits, rows, heads, 2, dtype=torch.float32, device=q.device)
        paged_attention_kernel[(rows // consts["BLOCK_Q"] + num_seqs, kv_heads, splits)](
            q,
            key_cache,
            value_cache,
            out,
            part,
            stats,
            tables.query_starts,
            tables.seq_lens,
            tables.block_tables,
            sinks,
            num_seqs,
            scaling if scaling is not None else dim**-0.5,
            variant.softcap or 0.0,
            variant.window or NO_WINDOW,
            q.stride(1),
            q.stride(0),
            key_cache.stride(0),
            key_cache.stride(1),
            out.stride(0),
            out.stride(1),
            tables.block_tables.stride(0),
            part.stride(0),
            part.stride(1),
            part.stride(2),
            stats.stride(0),
            stats.stride(1),
            **consts,
        )
        if splits > 1:
            combine_splits_kernel[(rows, heads)](
                part,
                stats,
                out,
                sinks,
                part.stride(0),
                part.stride(1),
                part.stride(2),
                stats.stride(0),
                stats.stride(1),
                out.stride(0),
                out.stride(1),
                HEAD_DIM=dim,
                BLOCK_D=consts["BLOCK_D"],
                NUM_SPLITS=splits,
                HAS_SINKS=variant.sinks is not None,
            )
        return out

    return triton_attend


triton_attend = make_triton_attend()
