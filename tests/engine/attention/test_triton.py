"""The Triton paged attention against the SDPA reference on random block tables, under the
interpreter on the CPU: decode, chunked prefill with context, shared prefix blocks, GQA, and
the attention variants (sliding window, softcap, sinks) with split keys."""

from __future__ import annotations

import random

import pytest
import torch
from triton_check import triton_tests

from loraplex.engine.attention.block_tables import build_sequence_tables
from loraplex.engine.attention.metadata import PLAIN, AttentionMetadata, Variant
from loraplex.engine.attention.paged import FORWARD, paged_attention
from loraplex.engine.attention.sdpa import sdpa_attend
from loraplex.engine.attention.select import select_attention
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.sched.scheduler import ScheduledSeq

pytestmark = triton_tests
CPU = torch.device("cpu")
NUM_BLOCKS = 64
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(scope="module")
def backend():
    from loraplex.engine.attention import triton as triton_attention

    return triton_attention


def step(
    rng: random.Random, shapes: list[tuple[int, int]], block_size: int, shared: int = 0
) -> AttentionMetadata:
    """The batch of sequences given as (cached tokens, new tokens), on random blocks; with
    ``shared``, the first two sequences share their first ``shared`` blocks (a cached prefix)."""
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    prefix = [free.pop() for _ in range(shared)]
    scheduled = []
    for i, (cached, new) in enumerate(shapes):
        total = cached + new
        seq = Sequence(str(i), [rng.randrange(90) for _ in range(total)], SamplingParams())
        own = -(-total // block_size) - (shared if i < 2 else 0)
        seq.block_table = (prefix if i < 2 else []) + [free.pop() for _ in range(own)]
        seq.num_computed_tokens = cached
        scheduled.append(ScheduledSeq(seq, new))
    return build_batch(scheduled, {}, block_size, 1, CPU).attention


def compare(
    backend, meta, heads, kv_heads, dim, dtype, splits=None, block_n=16, variant=PLAIN
) -> None:
    rows = meta.slot_mapping.shape[0]
    cache_rows = NUM_BLOCKS * meta.sequences.block_size + 1  # + the null row, zero
    key_cache = torch.randn(cache_rows, kv_heads, dim).to(dtype)
    value_cache = torch.randn(cache_rows, kv_heads, dim).to(dtype)
    key_cache[-1], value_cache[-1] = 0, 0
    # q as the model hands it over: [H, T, D] rows of a [T, H, D] projection.
    q = torch.randn(rows, heads, dim).to(dtype).transpose(0, 1)
    k = torch.randn(rows, kv_heads, dim).to(dtype)
    v = torch.randn(rows, kv_heads, dim).to(dtype)
    key_cache.index_copy_(0, meta.slot_mapping, k)
    value_cache.index_copy_(0, meta.slot_mapping, v)
    if variant.window is not None:  # keys that left every window: NaN, never to be read
        poison_out_of_window(meta, key_cache, value_cache, variant.window)
    scale = dim**-0.5
    expected = sdpa_attend(q, k, v, key_cache, value_cache, meta, scale, variant)
    attend = backend.make_triton_attend(num_splits=splits, block_n=block_n)
    got = attend(q, k, v, key_cache, value_cache, meta, scale, variant)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


def poison_out_of_window(meta, key_cache, value_cache, window: int) -> None:
    """NaN in every cache row a sequence's queries of this step all have out of their window."""
    tables = meta.sequences
    starts = tables.query_starts.tolist()
    for b, seq_len in enumerate(tables.seq_lens.tolist()):
        first_query = seq_len - (starts[b + 1] - starts[b])
        for p in range(max(first_query - window + 1, 0)):
            row = int(tables.block_tables[b, p // tables.block_size]) * tables.block_size
            key_cache[row + p % tables.block_size] = float("nan")
            value_cache[row + p % tables.block_size] = float("nan")


VARIANTS = {
    "window": Variant(window=7),
    "softcap": Variant(softcap=1.5),
    "sinks": Variant(sinks=torch.linspace(-2.0, 3.0, 6)),
    "all": Variant(window=20, softcap=4.0, sinks=torch.linspace(1.0, -1.0, 6)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_match_sdpa_with_split_keys(backend, name: str) -> None:
    """Decodes and chunks longer than the window, one and four key splits (merged with the
    sinks by the combine kernel)."""
    torch.manual_seed(7)
    meta = step(random.Random(7), [(40, 1), (25, 9), (0, 12), (70, 1)], block_size=4)
    compare(backend, meta, 6, 2, 16, torch.float32, splits=1, variant=VARIANTS[name])
    compare(backend, meta, 6, 2, 16, torch.float32, splits=4, variant=VARIANTS[name])


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (6, 2), (8, 2)], ids=["mha", "gqa3", "gqa4"])
def test_decode_matches_sdpa(backend, heads: int, kv_heads: int) -> None:
    rng = random.Random(heads)
    torch.manual_seed(heads)
    meta = step(rng, [(rng.randint(1, 50), 1) for _ in range(5)], block_size=4)
    compare(backend, meta, heads, kv_heads, 16, torch.float32, splits=1)
    compare(backend, meta, heads, kv_heads, 16, torch.float32, splits=4)


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (6, 2), (8, 2)], ids=["mha", "gqa3", "gqa4"])
def test_chunked_prefill_with_context_and_decode_in_one_launch(backend, heads, kv_heads):
    rng = random.Random(10 + heads)
    torch.manual_seed(heads)
    # A chunk after cached context, a fresh prompt, a decode, a one-block chunk at the start.
    meta = step(rng, [(20, 13), (0, 9), (33, 1), (0, 16)], block_size=16)
    compare(backend, meta, heads, kv_heads, 16, torch.float32, splits=1)
    compare(backend, meta, heads, kv_heads, 16, torch.float32, splits=2)


def test_shared_prefix_blocks_and_16_bit_caches(backend) -> None:
    rng = random.Random(3)
    torch.manual_seed(3)
    meta = step(rng, [(12, 5), (16, 1), (3, 1)], block_size=4, shared=3)
    assert torch.equal(meta.sequences.block_tables[0, :3], meta.sequences.block_tables[1, :3])
    compare(backend, meta, 4, 1, 16, torch.float16, splits=2)
    compare(backend, meta, 6, 2, 24, torch.bfloat16, splits=1, block_n=32)  # D not a power of 2


def test_split_choice_and_tile_checks(backend) -> None:
    assert backend.choose_splits(programs=64 * 2, max_seq_len=2048) == 4
    assert backend.choose_splits(programs=2048, max_seq_len=4096) == 1  # a long prefill
    assert backend.choose_splits(programs=8, max_seq_len=300) == 1  # short contexts
    with pytest.raises(ValueError, match=">= 16"):
        backend.make_triton_attend(block_n=8)
    with pytest.raises(ValueError, match="power of two"):
        backend.make_triton_attend(num_splits=3)


def test_the_registered_function_runs_the_chosen_backend(backend) -> None:
    """Through ``paged_attention`` (what transformers calls): cache writes, then the backend."""
    rng = random.Random(5)
    meta = step(rng, [(5, 3), (9, 1)], block_size=4)
    caches = [(torch.zeros(NUM_BLOCKS * 4, 1, 16), torch.zeros(NUM_BLOCKS * 4, 1, 16))]
    layer = torch.nn.Module()
    layer.layer_idx = 0
    q, k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)
    outputs = []
    for name in ("torch", "triton"):
        FORWARD.kv_caches, FORWARD.metadata = caches, meta
        FORWARD.attend = select_attention(name, CPU)[1]
        try:
            outputs.append(paged_attention(layer, q, k, v, None, scaling=0.25)[0])
        finally:
            FORWARD.metadata, FORWARD.attend = None, sdpa_attend
    assert outputs[0].shape == (1, 4, 2, 16)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


def test_selection_and_table_checks(monkeypatch) -> None:
    assert select_attention("auto", CPU) == ("torch", sdpa_attend)
    assert select_attention("triton", CPU)[0] == "triton"
    with pytest.raises(ValueError, match="attention-backend"):
        select_attention("flash", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA device"):
        select_attention("triton", CPU)
    with pytest.raises(ValueError, match="cannot end"):  # more positions than its blocks hold
        build_sequence_tables([(3, 9, [0, 1])], 4, CPU)
