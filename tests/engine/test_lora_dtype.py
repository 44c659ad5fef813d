"""``--lora-dtype``: slot tables in 16 bits under a float32 model, through the model runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, needs_cc, save_adapter, save_tiny_model
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import load_adapter
from loraplex.config import CacheConfig, LoRAConfig, ModelConfig
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.scheduler import ScheduledSeq

ADAPTER = {"r": 8, "lora_alpha": 16, "target_modules": ALL_SEVEN, "rank_pattern": {"o_proj": 2}}
PROMPTS = ([5, 6, 7, 8, 9], [3, 4, 5, 6])


def last_logits(runner: ModelRunner, adapter: str | None) -> torch.Tensor:
    """One prefill of both prompts, every row on ``adapter``; the last row of each."""
    seqs = []
    for i, prompt in enumerate(PROMPTS):
        seq = Sequence(str(i), prompt, SamplingParams(), adapter=adapter)
        seq.block_table = [2 * i, 2 * i + 1]
        seqs.append(seq)
    scheduled = [ScheduledSeq(s, len(s.prompt_token_ids)) for s in seqs]
    batch = build_batch(scheduled, {"a": 1}, 4, 2, torch.device("cpu"))
    return runner.forward(batch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora-dtype")
    model_dir = save_tiny_model(root / "model")
    return model_dir, save_adapter(model_dir, root / "a", seed=3, **ADAPTER)


def runner_for(model_dir: Path, adapter_dir: Path, kernel: str, lora_dtype: str) -> ModelRunner:
    runner = ModelRunner(
        str(model_dir),
        ModelConfig(model=str(model_dir), attention_backend="torch"),
        CacheConfig(block_size=4, num_blocks=8),
        LoRAConfig(max_loras=2, max_lora_rank=8, kernel=kernel, lora_dtype=lora_dtype),
    )
    shapes = runner.lora.module_shapes()
    runner.lora.load_slot(1, load_adapter("a", adapter_dir, shapes, limits=Limits(max_rank=8)))
    return runner


@pytest.mark.parametrize("lora_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kernel", ["torch", pytest.param("cpu", marks=needs_cc)])
def test_16_bit_tables_stay_close_to_peft(tiny, kernel: str, lora_dtype: str) -> None:
    model_dir, adapter_dir = tiny
    runner = runner_for(model_dir, adapter_dir, kernel, lora_dtype)
    layer = next(iter(runner.lora.layers.values()))
    assert layer.lora_a.dtype == layer.lora_b.dtype == getattr(torch, lora_dtype)
    assert layer.base.weight.dtype == torch.float32  # the model itself stays float32
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    with torch.no_grad():
        expected = torch.stack([peft(torch.tensor([p])).logits[0, -1] for p in PROMPTS])
        plain = torch.stack([base(torch.tensor([p])).logits[0, -1] for p in PROMPTS])
    got = last_logits(runner, "a")
    # The adapter's share of the logits, rounded to 16 bits once: a few 2^-8 of it at most.
    error = (got - expected).abs().max() / (expected - plain).abs().max()
    assert 0 < error < 0.05, float(error)


@needs_cc
@pytest.mark.parametrize("lora_dtype", ["bfloat16", "float16"])
def test_the_kernel_matches_the_torch_op_on_16_bit_tables(tiny, lora_dtype: str) -> None:
    """Same 16-bit tables, same float32 sums: the two backends agree to float32 rounding."""
    model_dir, adapter_dir = tiny
    outputs = [
        last_logits(runner_for(model_dir, adapter_dir, kernel, lora_dtype), "a")
        for kernel in ("torch", "cpu")
    ]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)


def test_auto_keeps_the_models_dtype(tiny) -> None:
    model_dir, adapter_dir = tiny
    runner = runner_for(model_dir, adapter_dir, "torch", "auto")
    assert all(layer.lora_a.dtype == torch.float32 for layer in runner.lora.layers.values())
