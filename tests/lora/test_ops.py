"""add_lora against the naive per-row loop, for both strategies and the 16-bit dtypes."""

from __future__ import annotations

import random

import pytest
import torch
from builders import naive_add_lora

from loraplex.lora.ops import add_lora, build_lora_meta


def random_rows(rng: random.Random, slots: int, long_chunk: bool) -> list[int]:
    """Decode-like: a few rows per slot. Prefill-like: one slot holds a long chunk."""
    per_slot = [rng.randint(0, 3) for _ in range(slots)]
    if long_chunk:
        per_slot[rng.randrange(slots)] = rng.randint(30, 60)
    rows = [s for s, n in enumerate(per_slot) for _ in range(n)]
    return rows + [-1] * rng.randint(0, 5)


@pytest.mark.parametrize("many_per_slot", [False, True], ids=["decode-like", "prefill-like"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_lora_matches_per_row_loop(many_per_slot: bool, dtype: torch.dtype) -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    strategies = set()
    for _ in range(10):
        slots, rank, fin, fout = rng.randint(2, 6), 8, 32, 48
        rows = random_rows(rng, slots, many_per_slot)
        if not any(r >= 0 for r in rows):
            rows = [0, *rows]
        x = torch.randn(len(rows), fin, dtype=dtype)
        y = torch.randn(len(rows), fout, dtype=dtype)
        lora_a = torch.randn(slots, rank, fin, dtype=dtype)
        lora_b = torch.randn(slots, rank, fout, dtype=dtype)
        expected = naive_add_lora(y.float(), x.float(), lora_a.float(), lora_b.float(), rows)
        meta = build_lora_meta(rows, slots)
        strategies.add(meta.strategy)
        add_lora(y, x, lora_a, lora_b, meta)
        tol = 1e-4 if dtype == torch.float32 else 0.1
        torch.testing.assert_close(y.float(), expected, atol=tol * 10, rtol=tol)
    assert ("grouped" if many_per_slot else "padded") in strategies  # both paths are exercised


def test_base_rows_are_untouched_and_no_meta_without_adapters() -> None:
    assert build_lora_meta([-1, -1, -1], 4) is None
    rows = [0, 2, -1, -1]
    y = torch.zeros(4, 8)
    add_lora(
        y, torch.randn(4, 8), torch.randn(3, 8, 8), torch.randn(3, 8, 8), build_lora_meta(rows, 3)
    )
    assert torch.all(y[2:] == 0) and torch.all(y[:2] != 0)


def test_rows_must_be_sorted_with_base_last() -> None:
    with pytest.raises(ValueError, match="sorted"):
        build_lora_meta([1, 0], 2)
    with pytest.raises(ValueError, match="sorted"):
        build_lora_meta([0, -1, 0], 2)
    with pytest.raises(ValueError, match="sorted"):
        build_lora_meta([3], 2)


@pytest.mark.parametrize("many_per_slot", [False, True], ids=["decode-like", "prefill-like"])
@pytest.mark.parametrize(
    "rows_dtype, table_dtype",
    [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
    ],
    ids=str,
)
def test_tables_in_another_dtype_are_widened(many_per_slot, rows_dtype, table_dtype) -> None:
    """``--lora-dtype``: 16-bit tables under float32 rows are summed in float32 (the oracle
    on the widened tables, to float32 rounding); float32 tables under bfloat16 rows too, and
    the update is rounded once into y."""
    rng = random.Random(1)
    torch.manual_seed(1)
    for _ in range(6):
        slots = rng.randint(2, 6)
        rows = random_rows(rng, slots, many_per_slot) or [0]
        if not any(r >= 0 for r in rows):
            rows = [0, *rows]
        x = torch.randn(len(rows), 32, dtype=rows_dtype)
        y = torch.randn(len(rows), 48, dtype=rows_dtype)
        lora_a = torch.randn(slots, 8, 32, dtype=table_dtype)
        lora_b = torch.randn(slots, 8, 48, dtype=table_dtype)
        expected = naive_add_lora(y.float(), x.float(), lora_a.float(), lora_b.float(), rows)
        add_lora(y, x, lora_a, lora_b, build_lora_meta(rows, slots))
        assert y.dtype == rows_dtype
        tol = 1e-5 if rows_dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y.float(), expected, atol=tol * 10, rtol=tol)
