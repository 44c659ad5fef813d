"""BlockManager: block accounting across boundaries, exhaustion, reuse and double free."""

from __future__ import annotations

import pytest

from loraplex.engine.block_manager import BlockManager
from loraplex.engine.sampling_params import SamplingParams
from loraplex.engine.sequence import Sequence


def make_seq(num_tokens: int, request_id: str = "r") -> Sequence:
    return Sequence(request_id, list(range(num_tokens)), SamplingParams())


def test_allocation_rounds_up_to_whole_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(10)
    assert bm.blocks_needed(seq, 10) == 3
    bm.allocate(seq, 10)
    assert seq.block_table == [0, 1, 2]
    assert bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)


def test_growth_allocates_only_at_block_boundaries() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(4)
    bm.allocate(seq, 4)
    seq.num_computed_tokens = 4
    assert seq.block_table == [0]
    # Token 5 starts a new block; tokens 6..8 fit in it.
    assert bm.blocks_needed(seq, 1) == 1
    bm.allocate(seq, 1)
    seq.num_computed_tokens = 5
    for computed in (5, 6, 7):
        seq.num_computed_tokens = computed
        assert bm.blocks_needed(seq, 1) == 0
        bm.allocate(seq, 1)  # no-op
    assert seq.block_table == [0, 1]
    seq.num_computed_tokens = 8
    assert bm.blocks_needed(seq, 1) == 1
    # A chunk spanning several boundaries at once.
    assert bm.blocks_needed(seq, 9) == 3


def test_exhaustion_raises_without_partial_allocation() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    a, b = make_seq(8, "a"), make_seq(4, "b")
    assert bm.can_allocate(a, 8)
    bm.allocate(a, 8)
    assert bm.num_free_blocks == 0
    assert bm.usage == 1.0
    assert not bm.can_allocate(b, 1)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(b, 1)
    assert b.block_table == []
    assert bm.num_free_blocks == 0


def test_free_returns_blocks_for_reuse() -> None:
    bm = BlockManager(num_blocks=3, block_size=2)
    a, b = make_seq(6, "a"), make_seq(2, "b")
    bm.allocate(a, 6)
    used = list(a.block_table)
    bm.free(a)
    assert a.block_table == []
    assert bm.num_free_blocks == 3
    assert bm.usage == 0.0
    bm.allocate(b, 6)
    assert sorted(b.block_table) == sorted(used)


def test_double_free_raises_and_leaves_state_intact() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = make_seq(4, "a"), make_seq(2, "b")
    bm.allocate(a, 4)
    stale = list(a.block_table)
    bm.free(a)
    b.block_table = stale  # a stale copy of freed blocks
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(b)
    assert bm.num_free_blocks == 4


def test_freeing_a_block_twice_in_one_table_raises() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq(2)
    bm.allocate(a, 2)
    a.block_table = a.block_table * 2
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(a)
    assert bm.num_free_blocks == 3


def test_free_of_empty_table_is_a_no_op() -> None:
    bm = BlockManager(num_blocks=2, block_size=2)
    bm.free(make_seq(3))
    assert bm.num_free_blocks == 2


def test_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError):
        BlockManager(0, 4)
    with pytest.raises(ValueError):
        BlockManager(4, 0)
