"""KV isolation (issue 24.1): stale or poisoned cache rows a sequence may not see contribute
exactly nothing, in the SDPA reference (packed batch and decode buffers) and in the Triton
kernel (under the interpreter); a request whose logits go non-finite fails alone and its
blocks are withdrawn from the prefix cache and zeroed."""

from __future__ import annotations

import random

import pytest
import torch
from triton_check import needs_triton

from loraplex.engine.attention.metadata import AttentionMetadata
from loraplex.engine.attention.sdpa import sdpa_attend
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.runner.decode_inputs import DecodeInputs
from loraplex.engine.sample.logprobs import read_sampled
from loraplex.engine.sample.sampler import NON_FINITE, guard_non_finite
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.scheduler import ScheduledSeq

CPU = torch.device("cpu")
BLOCK, POOL, HEADS, KV_HEADS, DIM = 4, 24, 4, 2, 16
NULL_BLOCK = POOL + 1  # the runner's layout: pool, scratch block, null block (zeros)
ROWS = (POOL + 2) * BLOCK


def decode_batch(rng: random.Random, lengths: list[int]) -> list[ScheduledSeq]:
    """Decode sequences of the given context lengths on shuffled blocks of the pool."""
    free = list(range(POOL))
    rng.shuffle(free)
    scheduled = []
    for i, length in enumerate(lengths):
        seq = Sequence(str(i), [rng.randrange(90) for _ in range(length)], SamplingParams())
        seq.block_table = [free.pop() for _ in range(-(-length // BLOCK))]
        seq.num_computed_tokens = length - 1
        scheduled.append(ScheduledSeq(seq, 1))
    return scheduled


def visible_rows(scheduled: list[ScheduledSeq]) -> set[int]:
    rows = set()
    for item in scheduled:
        for p in range(item.seq.num_tokens):
            rows.add(item.seq.block_table[p // BLOCK] * BLOCK + p % BLOCK)
    return rows


def caches(seen: set[int], poison: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys/values; with ``poison``, every row no sequence may see is NaN or inf
    (a previous owner's leftovers), except the null block, which nothing writes."""
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(ROWS, KV_HEADS, DIM, generator=gen)
    values = torch.randn(ROWS, KV_HEADS, DIM, generator=gen)
    keys[NULL_BLOCK * BLOCK :] = values[NULL_BLOCK * BLOCK :] = 0.0
    if poison:
        for row in range(NULL_BLOCK * BLOCK):
            if row not in seen:
                keys[row] = float("nan") if row % 2 else float("inf")
                values[row] = float("nan")
    return keys, values


def attend_both(meta: AttentionMetadata, seen: set[int], attend=sdpa_attend):
    """(clean, poisoned) outputs of one decode step over ``meta``."""
    rows = meta.slot_mapping.shape[0]
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(rows, HEADS, DIM, generator=gen).transpose(0, 1)
    results = []
    for poison in (False, True):
        key_cache, value_cache = caches(seen, poison)
        k, v = key_cache[meta.slot_mapping], value_cache[meta.slot_mapping]
        results.append(attend(q, k, v, key_cache, value_cache, meta, DIM**-0.5))
    return results


def test_sdpa_packed_batch_never_reads_padding_or_stale_rows() -> None:
    scheduled = decode_batch(random.Random(0), [3, 9, 14, 5])  # padding and partial blocks
    meta = build_batch(scheduled, {}, BLOCK, 1, CPU).attention
    clean, poisoned = attend_both(meta, visible_rows(scheduled))
    assert torch.isfinite(clean).all()
    assert torch.equal(clean, poisoned)


def test_sdpa_decode_buffers_never_read_a_blocks_stale_tail() -> None:
    scheduled = decode_batch(random.Random(1), [2, 7, 13])
    inputs = DecodeInputs(8, 6, 2, BLOCK, POOL, CPU)
    step = inputs.fill(scheduled, {}, pad_to=4)
    _, _, meta, _ = inputs.step_tensors(step.size, step.max_seq_len, 0, gather_keys=True)
    seen = visible_rows(scheduled) | set(range(POOL * BLOCK, (POOL + 1) * BLOCK))  # scratch
    clean, poisoned = attend_both(meta, seen)
    real = len(scheduled)
    assert torch.isfinite(clean[:real]).all()
    assert torch.equal(clean[:real], poisoned[:real])


@pytest.mark.triton
@needs_triton
def test_triton_kernel_never_reads_stale_rows() -> None:
    from loraplex.engine.attention.triton import make_triton_attend

    scheduled = decode_batch(random.Random(2), [6, 11, 3])
    meta = build_batch(scheduled, {}, BLOCK, 1, CPU).attention
    seen = visible_rows(scheduled)
    expected, _ = attend_both(meta, seen)
    _, poisoned = attend_both(meta, seen, make_triton_attend(num_splits=1))
    torch.testing.assert_close(poisoned, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_rows_are_zeroed_and_flagged_in_the_one_copy() -> None:
    logits = torch.randn(3, 10)
    logits[1, 4] = float("nan")
    logits[2, 0] = float("-inf")
    finite = guard_non_finite(logits)
    assert finite.tolist() == [True, False, False]
    assert torch.isfinite(logits).all() and not logits[1:].any()
    tokens = logits.argmax(dim=-1)
    ids, entries = read_sampled(tokens, logits, [None, 2, None], finite)
    assert ids == [int(tokens[0]), NON_FINITE, NON_FINITE]
    assert entries[0] is None and entries[1] is not None


def test_unpublished_blocks_are_never_shared_again() -> None:
    manager = BlockManager(8, BLOCK, enable_prefix_caching=True)
    first = Sequence("a", list(range(9)), SamplingParams())
    manager.admit(first, [], 9)
    manager.publish(first, 0, 9)
    twin = Sequence("b", list(range(9)), SamplingParams())
    assert manager.cached_prefix(twin) == first.block_table[:2]
    blocks = list(first.block_table)
    manager.unpublish(blocks)
    manager.free(first)
    assert manager.cached_prefix(twin) == []
    assert all(manager.is_free(b) for b in blocks)
