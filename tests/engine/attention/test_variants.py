"""Attention variants in the reference backend (sdpa.py) against transformers' own eager
attention (Gemma 2's with softcap, gpt-oss's with sinks) on whole sequences with a sliding-window
mask: decode rows and chunked prefill with cached context in one step, GQA; keys out of the
window are never read (their rows may hold NaN); the registered function takes the variant from
transformers' arguments and refuses what it cannot run."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_eager

from loraplex.engine.attention.metadata import PLAIN, AttentionMetadata, Variant
from loraplex.engine.attention.paged import variant_of
from loraplex.engine.attention.sdpa import sdpa_attend
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.sched.scheduler import ScheduledSeq

NUM_BLOCKS = 48
BLOCK = 4
HEADS, KV_HEADS, DIM = 6, 2, 16
VARIANTS = {
    "plain": PLAIN,
    "window": Variant(window=5),
    "softcap": Variant(softcap=2.0),
    "window+softcap": Variant(window=3, softcap=5.0),
    "sinks": Variant(sinks=torch.linspace(-1.0, 2.0, HEADS)),
    "window+sinks": Variant(window=4, sinks=torch.linspace(1.0, -2.0, HEADS)),
}


def step(shapes: list[tuple[int, int]], seed: int) -> tuple[AttentionMetadata, list]:
    """(cached tokens, new tokens) per sequence on random blocks -> metadata and the
    (seq, block table, new) of each."""
    rng = random.Random(seed)
    free = list(range(NUM_BLOCKS))
    rng.shuffle(free)
    scheduled = []
    for i, (cached, new) in enumerate(shapes):
        seq = Sequence(str(i), [1] * (cached + new), SamplingParams())
        seq.block_table = [free.pop() for _ in range(-(-(cached + new) // BLOCK))]
        seq.num_computed_tokens = cached
        scheduled.append(ScheduledSeq(seq, new))
    meta = build_batch(scheduled, {}, BLOCK, 1, torch.device("cpu")).attention
    return meta, scheduled


def oracle(q, key_cache, value_cache, scheduled, scale, variant) -> torch.Tensor:
    """Each sequence alone, through transformers' eager attention with an additive mask."""
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = HEADS // KV_HEADS, False
    outputs = []
    row = 0
    for item in scheduled:  # without adapters, build_batch keeps the order
        total, new = item.seq.num_computed_tokens + item.num_new_tokens, item.num_new_tokens
        pos = torch.arange(total)
        rows = torch.tensor(item.seq.block_table)[pos // BLOCK] * BLOCK + pos % BLOCK
        k = key_cache[rows].transpose(0, 1)[None]  # [1, H_kv, total, D]
        v = value_cache[rows].transpose(0, 1)[None]
        query_pos = torch.arange(total - new, total)[:, None]
        visible = pos[None, :] <= query_pos
        if variant.window is not None:
            visible &= pos[None, :] > query_pos - variant.window
        mask = torch.zeros(new, total).masked_fill(~visible, torch.finfo(torch.float32).min)
        cq = q[:, row : row + new][None]  # [1, H, new, D]
        if variant.sinks is not None:
            module.sinks = variant.sinks
            out, _ = gpt_oss_eager(module, cq, k, v, mask, scaling=scale)
        else:
            out, _ = gemma2_eager(module, cq, k, v, mask, scaling=scale, softcap=variant.softcap)
        outputs.append(out[0])  # [new, H, D]
        row += new
    return torch.cat(outputs)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_reference_matches_transformers_eager(name: str) -> None:
    variant = VARIANTS[name]
    torch.manual_seed(len(name))
    # decodes past the window, a chunk after cached context, a fresh prompt, a long decode
    meta, scheduled = step([(9, 1), (11, 6), (0, 7), (30, 1), (2, 1)], seed=len(name))
    rows = NUM_BLOCKS * BLOCK + 1  # + the null row
    key_cache, value_cache = torch.randn(rows, KV_HEADS, DIM), torch.randn(rows, KV_HEADS, DIM)
    key_cache[-1], value_cache[-1] = 0.0, 0.0
    q = torch.randn(meta.slot_mapping.shape[0], HEADS, DIM).transpose(0, 1)
    k = torch.randn(meta.slot_mapping.shape[0], KV_HEADS, DIM)
    v = torch.randn(meta.slot_mapping.shape[0], KV_HEADS, DIM)
    key_cache.index_copy_(0, meta.slot_mapping, k)
    value_cache.index_copy_(0, meta.slot_mapping, v)
    expected = oracle(q, key_cache, value_cache, scheduled, 0.3, variant)
    if variant.window is not None:  # what left every window is never read: poison it
        for item in scheduled:
            first_needed = item.seq.num_computed_tokens - variant.window + 1
            for p in range(max(first_needed, 0)):
                block = item.seq.block_table[p // BLOCK]
                key_cache[block * BLOCK + p % BLOCK] = float("nan")
                value_cache[block * BLOCK + p % BLOCK] = float("nan")
    got = sdpa_attend(q, k, v, key_cache, value_cache, meta, 0.3, variant)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_variant_comes_from_transformers_arguments() -> None:
    sinks = torch.zeros(4)
    assert variant_of({"dropout": 0.1, "use_cache": False, "position_ids": None}) is PLAIN
    assert variant_of({"sliding_window": None, "softcap": None}) is PLAIN
    assert variant_of({"sliding_window": 4096, "softcap": 50}) == Variant(4096, 50.0)
    assert variant_of({"s_aux": sinks}).sinks is sinks
    # A window only in the config (the model puts it into its mask, not its arguments).
    assert variant_of({}, config_window=8) == Variant(window=8)
    assert variant_of({"sliding_window": 4}, config_window=8) == Variant(window=4)
    for kwargs, feature in [
        ({"is_causal": False}, "bidirectional"),
        ({"encoder_hidden_states": torch.zeros(1)}, "cross-attention"),
        ({"attention_chunk_size": 8}, "'attention_chunk_size'"),
        ({"sliding_window": 0}, "sliding_window=0"),
        ({"s_aux": [1.0]}, "sinks"),
    ]:
        with pytest.raises(NotImplementedError, match=feature):
            variant_of(kwargs)
