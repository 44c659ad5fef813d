"""The buffered decode path (persistent buffers, padded rows, one copy a step) against the
packed ``build_batch`` path: the same logits step by step with three adapters and base rows in
one batch, on both attention backends, and the same greedy tokens through the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, needs_cc
from engine_helpers import run, save_store
from triton_check import needs_triton, triton_tests

from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import load_adapter
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.runner.decode_runner import DecodeRunner
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.scheduler import ScheduledSeq

BLOCK = 4
ADAPTERS = {
    "attn": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "all": {"r": 8, "lora_alpha": 16, "target_modules": ALL_SEVEN},
    "mlp": {"r": 2, "lora_alpha": 4, "target_modules": ["gate_proj", "down_proj"]},
}
# Prompt lengths 4 and 8 put the first decode token at a block boundary (a block is appended).
PROMPTS = [
    ([5, 6, 7, 8], "attn"),
    ([3, 4, 5], None),
    (list(range(20, 28)), "all"),
    ([30, 31], "mlp"),
    ([50, 51, 52, 53, 54], "all"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_store(tmp_path_factory.mktemp("decode"), ADAPTERS)


def runner_for(store: tuple[Path, Path], kernel: str, attention: str) -> ModelRunner:
    model_dir, adapters = store
    runner = ModelRunner(
        str(model_dir),
        ModelConfig(model=str(model_dir), attention_backend=attention),
        CacheConfig(block_size=BLOCK, num_blocks=64),
        LoRAConfig(max_loras=4, max_lora_rank=8, kernel=kernel),
    )
    for slot, name in enumerate(ADAPTERS):  # slot 3 stays empty
        adapter = load_adapter(
            name, adapters / name, runner.lora.module_shapes(), limits=Limits(max_rank=8)
        )
        runner.lora.load_slot(slot, adapter)
    return runner


@pytest.mark.parametrize(
    ("kernel", "attention", "decode_steps"),
    [
        ("torch", "torch", 3),
        pytest.param("cpu", "torch", 3, marks=needs_cc),
        pytest.param("triton", "triton", 1, marks=triton_tests),  # ~0.3 s a kernel launch
    ],
)
def test_buffered_decode_gives_the_logits_of_the_packed_batch(
    store, kernel: str, attention: str, decode_steps: int
) -> None:
    runner = runner_for(store, kernel, attention)
    slot_of = {name: slot for slot, name in enumerate(ADAPTERS)}
    decode = DecodeRunner(runner, max_num_seqs=8, max_model_len=64, pad=True)
    seqs = []
    for i, (prompt, adapter) in enumerate(PROMPTS):
        seq = Sequence(str(i), prompt, SamplingParams(), adapter=adapter)
        seq.block_table = [60 - 3 * i - j for j in range(2)]  # scattered, not in order
        seqs.append(seq)
    prefill = build_batch([ScheduledSeq(s, s.num_tokens) for s in seqs], slot_of, BLOCK, 4, "cpu")
    runner.forward(prefill)
    for seq in seqs:
        seq.num_computed_tokens = seq.num_tokens
        seq.append_token(40 + seq.num_tokens)
    for _ in range(decode_steps):
        for seq in seqs:  # the block manager's part: a block once the next token needs one
            if seq.num_computed_tokens // BLOCK >= len(seq.block_table):
                seq.block_table.append(len(seq.block_table) + 10 * int(seq.request_id))
        scheduled = [ScheduledSeq(s, 1) for s in seqs]
        packed = build_batch(scheduled, slot_of, BLOCK, 4, "cpu")
        expected = dict(zip(packed.sample_seqs, runner.forward(packed), strict=True))
        got_seqs, logits = decode.run(scheduled, slot_of)  # 5 rows padded to 8
        assert logits.shape[0] == len(seqs) and decode.inputs.seq_lens[5:8].tolist() == [1] * 3
        for seq, row in zip(got_seqs, logits, strict=True):
            torch.testing.assert_close(row, expected[seq], atol=1e-5, rtol=1e-5)
        for seq, row in zip(got_seqs, logits, strict=True):
            seq.num_computed_tokens += 1
            seq.append_token(int(row.argmax()))


def engine_for(store: tuple[Path, Path], buffered: bool, pad: bool):
    model_dir, adapters = store
    engine = build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64),
            cache=CacheConfig(block_size=BLOCK, num_blocks=64),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
            lora=LoRAConfig(max_loras=3, max_lora_rank=8, adapters_dir=str(adapters)),
        )
    )
    decode = engine.runner.decode
    decode.pad = pad
    calls = {"buffered": 0}
    real_run = decode.run

    def counted(scheduled, slot_of):
        calls["buffered"] += 1
        return real_run(scheduled, slot_of)

    decode.run = counted
    if not buffered:
        decode.eligible = lambda scheduled: False
    return engine, calls


@pytest.mark.parametrize("pad", [False, True])
def test_the_engine_decodes_through_the_buffers_to_the_tokens_of_packed_batches(
    store, pad: bool
) -> None:
    params = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    packed, packed_calls = engine_for(store, buffered=False, pad=pad)
    expected = run(packed, PROMPTS, **params)
    buffered, calls = engine_for(store, buffered=True, pad=pad)
    assert run(buffered, PROMPTS, **params) == expected
    assert packed_calls["buffered"] == 0 and calls["buffered"] >= 4  # most steps decode only
    assert buffered.block_manager.num_free_blocks == 64


@pytest.mark.triton
@needs_triton
def test_the_bounds_a_captured_graph_runs_with_give_the_eager_logits(store) -> None:
    """What a CUDA graph computes, run eagerly on the CPU (the Triton backends under the
    interpreter): every LoRA layer calls the op, every row is an upper bound of the adapter
    rows, and attention is configured for max_model_len keys (split four ways, mostly empty)."""
    runner = runner_for(store, "triton", "triton")
    slot_of = {name: slot for slot, name in enumerate(ADAPTERS)}
    decode = DecodeRunner(runner, max_num_seqs=8, max_model_len=2048, pad=True)
    seqs = []
    for i, (prompt, adapter) in enumerate(PROMPTS[:3]):
        seq = Sequence(str(i), prompt, SamplingParams(), adapter=adapter)
        seq.append_token(9)
        seq.num_computed_tokens = len(prompt)
        seq.block_table = [3 * i, 3 * i + 1, 3 * i + 2]
        seqs.append(seq)
    decode.run([ScheduledSeq(s, 1) for s in seqs], slot_of)  # the eager forward (size 4)
    eager = decode.forward(4, 9, 2)
    runner.lora.context.every_layer = True
    try:
        bounded = decode.forward(4, 2048, None)
    finally:
        runner.lora.context.every_layer = False
    torch.testing.assert_close(bounded[:3], eager[:3], atol=1e-5, rtol=1e-5)
