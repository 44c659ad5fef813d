"""A model whose every layer slides through one window (tiny Mistral, window 8): blocks that
leave the window go back to the pool as the sequences advance, and what they generate is still
HF's, token for token, through chunked prefill, the persistent decode buffers, preemption
under a pool too small for all of them at once, and the Triton backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import WINDOW, hf_generate, save_tiny_model

from loraplex import metrics
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards
BLOCK = 4
NEW = 12
PROMPTS = [[(5 * i + 7 * r) % 90 + 2 for i in range(24 + 3 * r)] for r in range(4)]


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    model_dir = save_tiny_model(tmp_path_factory.mktemp("mistral"), "mistral")
    expected = [hf_generate(model_dir, None, prompt, NEW)[0] for prompt in PROMPTS]
    return model_dir, expected


def engine_for(model_dir: Path, tmp_path: Path, num_blocks: int) -> LLMEngine:
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=4 * num_blocks),
            cache=CacheConfig(block_size=BLOCK, num_blocks=num_blocks),
            scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16),
            lora=LoRAConfig(adapters_dir=str(tmp_path)),
        )
    )


def generate(engine: LLMEngine) -> tuple[list[list[int]], int]:
    """All prompts at once, greedy; their tokens and the most blocks any one sequence held."""
    params = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    outputs: dict[str, list[int]] = {}
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), prompt, params, None)
        outputs[str(i)] = []
    held = 0
    null = engine.block_manager.null_block
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id].extend(out.token_ids)
        for seq in engine.scheduler.running:
            held = max(held, sum(b != null for b in seq.block_table))
    return [outputs[str(i)] for i in range(len(PROMPTS))], held


def test_blocks_leave_with_the_window_and_outputs_stay_exact(mistral, tmp_path: Path) -> None:
    model_dir, expected = mistral
    engine = engine_for(model_dir, tmp_path, num_blocks=64)
    assert engine.block_manager.sliding_window == WINDOW
    got, held = generate(engine)
    assert got == expected
    # A sequence never holds more than its window, one partial block and a 16-token chunk
    # (41 tokens would take 11 blocks kept whole).
    assert held <= (WINDOW + 16) // BLOCK + 2
    assert engine.block_manager.num_free_blocks == 64


def test_preemption_with_a_pool_smaller_than_the_batch(mistral, tmp_path: Path) -> None:
    model_dir, expected = mistral
    engine = engine_for(model_dir, tmp_path, num_blocks=12)  # 4 prompts: 40 blocks kept
    before = metrics.PREEMPTIONS._value.get()
    got, _ = generate(engine)
    assert got == expected
    assert metrics.PREEMPTIONS._value.get() > before


@pytest.mark.triton
def test_the_triton_backend_reads_only_the_window(mistral, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    from loraplex.engine.attention.triton import triton_attend

    model_dir, expected = mistral
    engine = engine_for(model_dir, tmp_path, num_blocks=64)
    engine.runner.attend = triton_attend
    # Freed blocks hold NaN from now on: a kernel that read one would poison its sequence.
    runner, pool = engine.runner, engine.block_manager

    def poison_freed() -> None:
        for block in range(pool.num_blocks):
            if pool.is_free(block):
                rows = slice(block * BLOCK, (block + 1) * BLOCK)
                for key_cache, value_cache in runner.kv_caches:
                    key_cache[rows], value_cache[rows] = torch.nan, torch.nan

    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    engine.add_request("0", PROMPTS[0], params, None)
    tokens: list[int] = []
    while engine.has_unfinished():
        poison_freed()
        for out in engine.step():
            tokens.extend(out.token_ids)
    assert tokens == expected[0][:4]
