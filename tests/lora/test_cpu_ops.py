"""The C add_lora kernel against the per-row oracle, and backend selection (its build:
test_cpu_build.py)."""

from __future__ import annotations

import dataclasses
import logging
import platform
import random
from pathlib import Path

import pytest
import torch
from builders import HAS_CC, naive_add_lora, needs_cc

from loraplex.lora.ops import LoRAMeta, add_lora, build_lora_meta, select_add_lora
from loraplex.lora.ops.cpu_build import FLAG_SETS, KernelBuildError, build
from loraplex.lora.ops.cpu_ops import GEMM_ROWS, _split, f16_in_hardware, load

CPU = torch.device("cpu")
TABLE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def cpu_add_lora(tmp_path_factory: pytest.TempPathFactory):
    if not HAS_CC:
        pytest.skip("no C compiler on this machine")
    return load(tmp_path_factory.mktemp("kernels"))


def random_case(rng: random.Random, slots: int, rows_per_slot: tuple[int, int]) -> list[int]:
    """Slot-sorted adapter rows (some slots empty), then a few base rows."""
    counts = [rng.randint(*rows_per_slot) if rng.random() < 0.7 else 0 for _ in range(slots)]
    rows = [s for s, n in enumerate(counts) for _ in range(n)] or [0]
    return rows + [-1] * rng.randint(0, 4)


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "rows_per_slot",
    [(1, 3), (5, 20), (20, 45)],
    # prefill-like: slots of GEMM_ROWS rows or more go to BLAS, the others to the kernel
    ids=["decode-like", "chunks-over-8-rows", "prefill-like"],
)
def test_kernel_matches_the_reference(cpu_add_lora, rows_per_slot, threads: int) -> None:
    rng = random.Random(threads)
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(8):
            # Ranks and widths that are not multiples of the kernel's 8-float vectors.
            slots, rank = rng.randint(1, 6), rng.choice([1, 5, 8, 16])
            fan_in, fan_out = rng.choice([8, 37, 64]), rng.choice([3, 29, 48])
            rows = random_case(rng, slots, rows_per_slot)
            # x is a column slice of a wider tensor: rows are strided, not dense.
            x = torch.randn(len(rows), fan_in + 3)[:, :fan_in]
            y = torch.randn(len(rows), fan_out)
            lora_a = torch.randn(slots, rank, fan_in)
            lora_b = torch.randn(slots, rank, fan_out)
            meta = build_lora_meta(rows, slots)
            expected = naive_add_lora(y, x, lora_a, lora_b, rows)
            cpu_add_lora(y, x, lora_a, lora_b, meta)
            torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-5)
            base = [i for i, slot in enumerate(rows) if slot < 0]
            assert torch.equal(y[base], expected[base])  # base rows are never written
    finally:
        torch.set_num_threads(before)


def mixed_rank_tables(slots: int, rank: int, ranks: list[int], fan_in: int, fan_out: int):
    """(zero-padded, NaN-padded) slot tables: slot s is real up to ``ranks[s]``."""
    lora_a = torch.randn(slots, rank, fan_in) * fan_in**-0.5
    lora_b = torch.randn(slots, rank, fan_out)
    zero, nan = (lora_a.clone(), lora_b.clone()), (lora_a, lora_b)
    for s, r in enumerate(ranks):
        for table in zero:
            table[s, r:] = 0
        for table in nan:
            table[s, r:] = float("nan")
    return zero, nan


@needs_cc
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", TABLE_DTYPES, ids=str)
def test_kernel_reads_only_each_slots_real_rank(cpu_add_lora, dtype, threads: int) -> None:
    """Padding past each slot's rank is NaN: one read of it would poison the rows. Results
    match the per-row oracle and the torch op on the same tables padded with zeros."""
    rng = random.Random(threads)
    torch.manual_seed(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in range(8):
            slots, rank = rng.randint(2, 6), rng.choice([8, 16, 64])
            ranks = [rng.choice([0, 1, 3, rank // 2, rank]) for _ in range(slots)]
            # Odd widths exercise the kernel's tails; widths of 8 let the torch op run too.
            fan_in, fan_out = rng.choice([(37, 29), (40, 24), (64, 48)])
            rows = random_case(rng, slots, [(1, 3), (5, 20), (20, 45)][case % 3])
            (a, b), (a_nan, b_nan) = mixed_rank_tables(slots, rank, ranks, fan_in, fan_out)
            a, b, a_nan, b_nan = (t.to(dtype) for t in (a, b, a_nan, b_nan))
            x, y = torch.randn(len(rows), fan_in), torch.randn(len(rows), fan_out)
            meta = dataclasses.replace(
                build_lora_meta(rows, slots), slot_ranks=torch.tensor(ranks, dtype=torch.int32)
            )
            expected = naive_add_lora(y, x, a.float(), b.float(), rows)
            got = y.clone()
            cpu_add_lora(got, x, a_nan, b_nan, meta)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
            if fan_in % 8 == 0 and fan_out % 8 == 0:  # torch's grouped matmul: 16-byte strides
                reference = y.clone()
                add_lora(reference, x, a, b, meta)
                torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="-mno-f16c is x86's")
def test_float16_without_f16c_widens_the_same(tmp_path: Path, cpu_add_lora) -> None:
    """The kernel built without F16C widens half floats in integer lanes: the same bits as the
    F16C build, subnormals, zeros and negative values included."""
    no_f16c = tuple((*flags, "-mno-f16c") for flags in FLAG_SETS if "-mf16c" not in flags)
    software = load(tmp_path, no_f16c)
    assert not f16_in_hardware(build(tmp_path, no_f16c))
    torch.manual_seed(0)
    rows = [0, 0, 1, 2, 2, 2, -1]
    lora_a = torch.randn(3, 8, 40, dtype=torch.float16)
    lora_a[0, 0, :20] = torch.randn(20) * 1e-6  # float16 subnormals (below 6.1e-5)
    lora_a[1, 1, :4] = torch.tensor([0.0, -0.0, 65504.0, -6e-8])
    lora_b = torch.randn(3, 8, 24, dtype=torch.float16)
    x, y = torch.randn(len(rows), 40), torch.randn(len(rows), 24)
    meta = build_lora_meta(rows, 3)
    outputs = []
    for op in (cpu_add_lora, software):
        out = y.clone()
        op(out, x, lora_a, lora_b, meta)
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    expected = naive_add_lora(y, x, lora_a.float(), lora_b.float(), rows)
    torch.testing.assert_close(outputs[1], expected, atol=1e-2, rtol=1e-5)


def test_kernel_refuses_bad_slot_ranks(cpu_add_lora) -> None:
    tables = torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)
    meta = build_lora_meta([0, 1], 2)
    for ranks in (
        torch.tensor([8, 9], dtype=torch.int32),  # past the tables' rank: the next slot's rows
        torch.tensor([-1, 8], dtype=torch.int32),
        torch.tensor([8, 8]),  # int64
        torch.tensor([8], dtype=torch.int32),  # one per slot
    ):
        with pytest.raises(ValueError, match="does not fit"):
            step = dataclasses.replace(meta, slot_ranks=ranks)
            cpu_add_lora(torch.zeros(2, 8), torch.zeros(2, 8), *tables, step)
    with pytest.raises(ValueError, match="float32"):  # 16-bit rows: the torch op's
        cpu_add_lora(torch.zeros(2, 8).half(), torch.zeros(2, 8).half(), *tables, meta)
    with pytest.raises(ValueError, match="both alike"):
        cpu_add_lora(torch.zeros(2, 8), torch.zeros(2, 8), tables[0], tables[1].half(), meta)


def test_kernel_refuses_what_it_cannot_read(cpu_add_lora) -> None:
    meta = build_lora_meta([0], 1)
    y = torch.zeros(1, 8)
    tables = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    with pytest.raises(ValueError, match="float32"):  # a bf16 model must use the torch op
        cpu_add_lora(
            y, torch.zeros(1, 8), torch.zeros(1, 8, 8).double(), torch.zeros(1, 8, 8), meta
        )
    with pytest.raises(ValueError, match="dense"):
        lora_b = torch.zeros(1, 8, 8).transpose(1, 2)
        cpu_add_lora(y, torch.zeros(1, 8), torch.zeros(1, 8, 8), lora_b, meta)
    with pytest.raises(ValueError, match="dense"):  # tables for another layer's width
        cpu_add_lora(y, torch.zeros(1, 8), torch.zeros(1, 8, 16), torch.zeros(1, 8, 8), meta)
    with pytest.raises(ValueError, match="rows, features"):  # [1, T, in] must be flattened
        cpu_add_lora(y[None], torch.zeros(1, 1, 8), *tables, meta)
    with pytest.raises(ValueError, match="does not fit"):  # more adapter rows than x has
        cpu_add_lora(y, torch.zeros(1, 8), *tables, build_lora_meta([0, 0], 1))
    with pytest.raises(ValueError, match="does not fit"):  # metadata for another slot count
        cpu_add_lora(y, torch.zeros(1, 8), *tables, build_lora_meta([0], 2))


def test_kernel_checks_metadata_it_did_not_build(cpu_add_lora) -> None:
    """Slot ends out of order would send a slot past x's rows: refused, not read."""
    tables = torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)
    for ends in ([3, 2], [-1, 2], [1, 1]):  # descending, negative, not ending at the rows
        meta = LoRAMeta(2, torch.tensor(ends, dtype=torch.int32), None, None, 0)
        with pytest.raises(ValueError, match="does not fit"):
            cpu_add_lora(torch.zeros(2, 8), torch.zeros(2, 8), *tables, meta)


def test_kernel_checks_every_new_table(cpu_add_lora) -> None:
    """Tables are checked once and then known by identity; a new tensor (even one at a
    freed tensor's address) is checked again."""
    meta = build_lora_meta([0, 1], 2)
    x, y = torch.randn(2, 8), torch.zeros(2, 8)
    for _ in range(3):
        lora_a, lora_b = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
        cpu_add_lora(y, x, lora_a, lora_b, meta)
        del lora_a, lora_b
        with pytest.raises(ValueError, match="float32"):
            cpu_add_lora(y, x, torch.zeros(2, 4, 8).double(), torch.zeros(2, 4, 8), meta)
        with pytest.raises(ValueError, match="float32"):  # known A, new B of another shape
            lora_a = torch.randn(2, 4, 8)
            cpu_add_lora(y, x, lora_a, torch.randn(2, 4, 8), meta)
            cpu_add_lora(y, x, lora_a, torch.randn(2, 3, 8), meta)


def test_select_falls_back_or_refuses(tmp_path: Path, monkeypatch, caplog) -> None:
    assert select_add_lora("torch", CPU, torch.float32, tmp_path, 16) == ("torch", add_lora)
    assert select_add_lora("auto", CPU, torch.bfloat16, tmp_path, 16) == ("torch", add_lora)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        select_add_lora("cpu", CPU, torch.bfloat16, tmp_path, 16)
    # 16-bit tables under a bfloat16 model: the torch op; the triton op needs one dtype.
    bf16_tables = select_add_lora("auto", CPU, torch.bfloat16, tmp_path, 16, torch.float16)
    assert bf16_tables == ("torch", add_lora)
    with pytest.raises(ValueError, match="--lora-dtype auto"):
        select_add_lora("triton", CPU, torch.float32, tmp_path, 16, torch.bfloat16)
    # Ranks past the kernel's stack budget take the reference (or are refused when forced).
    assert select_add_lora("auto", CPU, torch.float32, tmp_path, 2048) == ("torch", add_lora)
    with pytest.raises(ValueError, match="ranks up to 1024"):
        select_add_lora("cpu", CPU, torch.float32, tmp_path, 2048)
    with pytest.raises(ValueError, match="unknown LoRA kernel"):
        select_add_lora("fastest", CPU, torch.float32, tmp_path, 16)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING):
        assert select_add_lora("auto", CPU, torch.float32, tmp_path, 16) == ("torch", add_lora)
    assert "no C compiler" in caplog.text
    with pytest.raises(KernelBuildError, match="no C compiler"):
        select_add_lora("cpu", CPU, torch.float32, tmp_path, 16)


@needs_cc
@pytest.mark.parametrize("dtype", TABLE_DTYPES, ids=str)
def test_select_takes_the_kernel_for_every_table_dtype(tmp_path: Path, dtype) -> None:
    assert select_add_lora("auto", CPU, torch.float32, tmp_path, 16, dtype)[0] == "cpu"


def test_split_gives_long_slots_to_blas_and_zeroes_their_kernel_rank() -> None:
    rows = [0] * 2 + [1] * GEMM_ROWS + [3] * (GEMM_ROWS + 5) + [-1] * 3  # slot 2 empty
    meta = dataclasses.replace(
        build_lora_meta(rows, 4), slot_ranks=torch.tensor([8, 4, 8, 0], dtype=torch.int32)
    )
    split = _split(meta, 8)
    assert split.gemm == [(1, 2, 2 + GEMM_ROWS, 4)]  # slot 3 has rank 0: nothing to add
    assert split.ranks.tolist() == [8, 0, 8, 0] and split.kernel
    assert meta.slot_ranks.tolist() == [8, 4, 8, 0]  # the step's metadata is not changed
    only_long = build_lora_meta([1] * GEMM_ROWS, 2)
    split = _split(only_long, 16)
    assert split.gemm == [(1, 0, GEMM_ROWS, 16)] and not split.kernel
    decode = build_lora_meta([0, 1, 1], 2)
    assert _split(decode, 16) == type(split)(None, [], True)
