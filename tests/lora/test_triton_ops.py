"""The Triton add_lora against the torch op (the oracle), under the interpreter on the CPU."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from test_ops import random_rows
from triton_check import triton_tests

from loraplex.lora.ops import LoRAMeta, add_lora, build_lora_meta, select_add_lora

pytestmark = triton_tests
CPU = torch.device("cpu")
# fp32 and fp16 are held tight; bf16 within 2 ulp of the result (the interpreter truncates
# casts to bf16 where the hardware rounds them).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}


@pytest.fixture(scope="module")
def triton_ops():
    from loraplex.lora.ops import triton_ops

    return triton_ops


def tables(slots: int, rank: int, fan_in: int, fan_out: int, ranks: list[int], dtype):
    """Slot tables padded to ``rank``, each slot's rows past its real rank filled with NaN:
    a kernel that reads padded rank rows poisons its output. Returns (tables, zero-padded
    copies for the oracle)."""
    lora_a = torch.randn(slots, rank, fan_in) / fan_in**0.5
    lora_b = torch.randn(slots, rank, fan_out) / rank**0.5
    for slot, r in enumerate(ranks):
        lora_a[slot, r:], lora_b[slot, r:] = float("nan"), float("nan")
    clean = lora_a.nan_to_num(0.0).to(dtype), lora_b.nan_to_num(0.0).to(dtype)
    return (lora_a.to(dtype), lora_b.to(dtype)), clean


def check(op, rows: list[int], dtype, fan_in=48, fan_out=40, rank=16, ranks=None) -> None:
    slots = max(rows) + 1
    ranks = ranks or [rank] * slots
    x = torch.randn(len(rows), fan_in).to(dtype)
    y = torch.randn(len(rows), fan_out).to(dtype)
    (lora_a, lora_b), (clean_a, clean_b) = tables(slots, rank, fan_in, fan_out, ranks, dtype)
    meta = build_lora_meta(rows, slots)
    expected = y.clone()
    add_lora(expected, x, clean_a, clean_b, meta)
    got = y.clone()
    meta = dataclasses.replace(meta, slot_ranks=torch.tensor(ranks, dtype=torch.int32))
    op(got, x, lora_a, lora_b, meta)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), rtol=2 * tol, atol=2 * tol)
    base = [i for i, slot in enumerate(rows) if slot < 0]
    assert torch.equal(got[base], y[base])  # base rows are never written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("many_per_slot", [False, True], ids=["decode-like", "prefill-like"])
def test_matches_the_torch_op_on_the_reference_layouts(triton_ops, many_per_slot, dtype):
    """The layouts of test_ops.py (a few rows per slot; one slot with a long chunk), with
    split-K forced off, forced on, and chosen by the heuristic."""
    rng = random.Random(1)
    torch.manual_seed(1)
    for split_k in (1, 2, None):
        rows = random_rows(rng, rng.randint(2, 4), many_per_slot)
        if not any(r >= 0 for r in rows):
            rows = [0, *rows]
        check(triton_ops.make_add_lora(split_k), rows, dtype)


def test_mixed_ranks_stream_only_real_rank_rows(triton_ops) -> None:
    """Ranks 16, 3 and 9 in tables padded to 32 (the NaN padding is never read), with an empty
    slot between them, a rank past one rank tile, and an input split over 4 partial sums."""
    torch.manual_seed(2)
    rows = [0] * 3 + [2] * 5 + [3] * 2 + [-1] * 2
    check(triton_ops.make_add_lora(4), rows, torch.float32, rank=32, ranks=[16, 0, 3, 9])
    check(triton_ops.make_add_lora(1), rows, torch.float16, rank=32, ranks=[32, 0, 1, 17])


def test_empty_slots_and_an_all_base_step_change_nothing(triton_ops) -> None:
    x, y = torch.randn(5, 32), torch.randn(5, 24)
    lora_a, lora_b = torch.randn(3, 16, 32), torch.randn(3, 16, 24)
    before = y.clone()
    all_base = LoRAMeta(0, torch.zeros(3, dtype=torch.int32), None, None, 0)
    triton_ops.add_lora(y, x, lora_a, lora_b, all_base)
    assert torch.equal(y, before)
    # Only slot 1 has rows; slots 0 and 2 are empty (and their tables are garbage).
    lora_a[0], lora_a[2] = float("nan"), float("nan")
    meta = build_lora_meta([1, 1, -1, -1, -1], 3)
    triton_ops.add_lora(y, x, lora_a, lora_b, meta)
    expected = before.clone()
    expected[:2] += x[:2] @ lora_a[1].T @ lora_b[1]
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)


def test_fused_projection_parts_land_at_their_column_offsets(triton_ops) -> None:
    """A fused qkv output [T, 16 + 32 + 8] takes each part's update in place through column
    views; x is a column view of a wider activation."""
    torch.manual_seed(3)
    rows = [0, 0, 1, -1]
    wide_x = torch.randn(len(rows), 40)
    x = wide_x[:, 4:36]
    fused = torch.randn(len(rows), 56)
    expected = fused.clone()
    meta = build_lora_meta(rows, 2)
    for start, width in ((0, 16), (16, 32), (48, 8)):
        lora_a, lora_b = torch.randn(2, 16, 32), torch.randn(2, 16, width)
        triton_ops.add_lora(fused[:, start : start + width], x, lora_a, lora_b, meta)
        add_lora(expected[:, start : start + width], x.contiguous(), lora_a, lora_b, meta)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-4)


def test_tiles_are_legal_on_hardware_and_split_small_batches(triton_ops) -> None:
    with pytest.raises(ValueError, match=">= 16"):
        triton_ops.Tiles(block_m=8, block_r=16, block_k=64, block_n=64, split_k=1)
    with pytest.raises(ValueError, match="powers of two"):
        triton_ops.Tiles(block_m=16, block_r=24, block_k=64, block_n=64, split_k=1)
    decode = triton_ops.choose_tiles(rows=64, slots=16, fan_in=4096, rank=16, split_k=None)
    prefill = triton_ops.choose_tiles(rows=4096, slots=16, fan_in=4096, rank=16, split_k=None)
    assert decode.split_k > 1 and prefill.split_k == 1
    assert triton_ops.choose_tiles(64, 16, 4096, 4, None).block_r == 16  # rank 4: a 16 tile


def test_bad_tensors_and_metadata_are_refused(triton_ops) -> None:
    meta = build_lora_meta([0], 1)
    y, x = torch.zeros(1, 16), torch.zeros(1, 16)
    lora_a, lora_b = torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)
    with pytest.raises(ValueError, match="one dtype"):
        triton_ops.add_lora(y, x.double(), lora_a, lora_b, meta)
    with pytest.raises(ValueError, match="rows, features"):
        triton_ops.add_lora(y[None], x, lora_a, lora_b, meta)
    with pytest.raises(ValueError, match="does not fit"):  # metadata for two slots
        triton_ops.add_lora(y, x, lora_a, lora_b, build_lora_meta([0], 2))
    ranks = dataclasses.replace(meta, slot_ranks=torch.tensor([16]))  # int64, not int32
    with pytest.raises(ValueError, match="does not fit"):
        triton_ops.add_lora(y, x, lora_a, lora_b, ranks)


def test_selection(monkeypatch) -> None:
    name, op = select_add_lora("triton", CPU, torch.bfloat16, None, 16)
    assert name == "triton" and op is not add_lora
    # auto never picks the interpreter on the CPU: it is for tests, not for serving.
    assert select_add_lora("auto", CPU, torch.bfloat16, None, 16) == ("torch", add_lora)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA device"):
        select_add_lora("triton", CPU, torch.float32, None, 16)
