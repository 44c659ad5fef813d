"""BlockManager: block accounting across boundaries, exhaustion, reuse and double free."""

from __future__ import annotations

import pytest

from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.block_manager import BlockManager


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


# ---- prefix caching ------------------------------------------------------------------------


def run_prompt(bm: BlockManager, tokens: list[int], request_id: str, adapter: str | None = None):
    """Admit a new sequence with its cached prefix, "compute" the rest, publish its blocks."""
    seq = Sequence(request_id, tokens, SamplingParams(), adapter=adapter)
    cached = bm.cached_prefix(seq)
    uncomputed = seq.num_tokens - len(cached) * bm.block_size
    assert bm.can_admit(seq, cached, uncomputed)
    bm.admit(seq, cached, uncomputed)
    start = seq.num_computed_tokens
    seq.num_computed_tokens = seq.num_tokens
    bm.publish(seq, start, uncomputed)
    return seq


def test_a_repeated_prefix_shares_full_blocks_and_leaves_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    first = run_prompt(bm, list(range(10)), "a")  # blocks: [0..3] [4..7] [8, 9]
    assert first.num_cached_tokens == 0
    second = run_prompt(bm, [*range(8), 42, 43, 44], "b")
    assert second.num_cached_tokens == 8
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] not in first.block_table
    # A prompt that is exactly the cached blocks still computes its last token.
    third = run_prompt(bm, list(range(8)), "c")
    assert third.num_cached_tokens == 4
    assert bm.num_free_blocks == 16 - 3 - 1 - 1  # a: 3, b: 1 own, c: 1 own


def test_the_prefix_cache_is_per_adapter_and_matches_whole_leading_blocks_only() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    run_prompt(bm, list(range(12)), "base")
    assert run_prompt(bm, list(range(12)), "lora", adapter="a@1").num_cached_tokens == 0
    assert run_prompt(bm, list(range(12)), "lora2", adapter="a@1").num_cached_tokens == 8
    merged = Sequence("m", list(range(12)), SamplingParams(), adapter="a@1", merged=True)
    assert bm.cached_prefix(merged) == []  # merged weights compute other floats
    # A change in the first block changes every later hash.
    assert run_prompt(bm, [99, *range(1, 12)], "other").num_cached_tokens == 0


def test_shared_blocks_are_freed_by_their_last_owner_and_stay_cached_until_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a = run_prompt(bm, [1, 2, 3, 4, 5], "a")  # 3 blocks
    b = run_prompt(bm, [1, 2, 3, 4, 9], "b")  # shares 2, owns 1
    assert bm.num_free_blocks == 0
    shared = a.block_table[0]
    bm.free(a)
    assert bm.num_free_blocks == 1  # the shared blocks are still b's
    bm.free(b)
    assert bm.num_free_blocks == 4
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(Sequence("x", [1], SamplingParams(), block_table=[shared]))
    # Freed blocks still serve the prefix; taking them back out of the pool counts.
    c = Sequence("c", [1, 2, 3, 4, 7, 8, 9], SamplingParams())
    cached = bm.cached_prefix(c)
    assert len(cached) == 2
    assert bm.can_admit(c, cached, 3)  # 2 more blocks from the 2 left
    assert not bm.can_admit(c, cached, 5)
    bm.admit(c, cached, 3)
    assert bm.num_free_blocks == 0


def test_reallocating_a_cached_block_evicts_its_prefix_coldest_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    bm.free(run_prompt(bm, [1, 2, 3], "old"))  # caches block [1, 2]
    bm.free(run_prompt(bm, [5, 6, 7], "new"))  # caches block [5, 6]
    # The pool hands out what was freed longest ago: both of old's blocks, evicting its prefix.
    bm.allocate(Sequence("f", [0] * 4, SamplingParams()), 4)
    assert bm.cached_prefix(Sequence("x", [1, 2, 3], SamplingParams())) == []
    assert len(bm.cached_prefix(Sequence("y", [5, 6, 7], SamplingParams()))) == 1


def test_a_cache_salt_isolates_prefixes() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)

    def salted(request_id: str, salt: str | None) -> int:
        seq = Sequence(request_id, list(range(12)), SamplingParams(), cache_salt=salt)
        cached = bm.cached_prefix(seq)
        bm.admit(seq, cached, seq.num_tokens - len(cached) * bm.block_size)
        bm.publish(seq, seq.num_computed_tokens, seq.num_tokens - seq.num_computed_tokens)
        seq.num_computed_tokens = seq.num_tokens
        return seq.num_cached_tokens

    assert salted("a", "tenant-1") == 0
    assert salted("b", "tenant-2") == 0  # same tokens, other salt: no hit
    assert salted("c", None) == 0
    assert salted("d", "tenant-1") == 8


def test_prefix_caching_off_never_shares() -> None:
    bm = BlockManager(num_blocks=8, block_size=2)
    run_prompt(bm, [1, 2, 3], "a")
    assert run_prompt(bm, [1, 2, 3], "b").num_cached_tokens == 0


def test_sliding_window_frees_blocks_that_left_the_window() -> None:
    """Window 6, blocks of 4: with the next token at p, blocks wholly before p - 5 go back
    to the pool (the null block takes their place), shared ones only lose a reference."""
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True, sliding_window=6)
    seq, other = make_seq(20), make_seq(20, "o")
    bm.allocate(seq, 16)
    seq.num_computed_tokens = 9  # next token 9 sees 4..9: block 0 (tokens 0..3) is out
    bm.publish(seq, 0, 9)
    assert bm.free_out_of_window(seq) == 1
    assert seq.block_table == [bm.null_block, 1, 2, 3] and bm.is_free(0)
    assert bm.cached_prefix(other) == [0, 1]  # freed, still findable (like any freed block)
    assert bm.free_out_of_window(seq) == 0  # nothing new left the window
    bm.admit(other, [0, 1], 4)  # shares blocks 0 and 1
    seq.num_computed_tokens = 14  # sees 9..14: block 1 (4..7) is out, but `other` holds it
    assert bm.free_out_of_window(seq) == 1 and not bm.is_free(1)
    bm.free(seq)  # skips the null entries
    bm.free(other)
    assert bm.num_free_blocks == 8 and not bm.is_free(bm.null_block)
    assert BlockManager(8, 4).free_out_of_window(make_seq(3)) == 0  # no window: never
