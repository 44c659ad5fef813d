"""One packed forward of a mixed batch equals PEFT run per request (PEFT is the oracle)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, needs_cc, save_adapter, save_tiny_model
from peft import PeftModel
from transformers import AutoModelForCausalLM
from triton_check import triton_tests

from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import load_adapter
from loraplex.config import CacheConfig, LoRAConfig, ModelConfig
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.scheduler import ScheduledSeq

BLOCK = 4
ADAPTERS = {
    "llama": {
        "attn": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "all": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ALL_SEVEN,
            "rank_pattern": {"down_proj": 2},
            "alpha_pattern": {"o_proj": 3},
            "use_rslora": True,
        },
    },
    "gpt2": {
        "attn": {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True},
        "all": {
            "r": 8,
            "lora_alpha": 4,
            "target_modules": ["c_attn", "c_proj", "c_fc"],
            "fan_in_fan_out": True,
        },
    },
}
ADAPTERS["qwen2"] = ADAPTERS["llama"]


def reference_logits(model_dir: Path, adapter_dir: Path | None, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def make_seq(prompt: list[int], adapter: str | None, blocks: list[int]) -> Sequence:
    seq = Sequence(str(len(blocks)), prompt, SamplingParams(), adapter=adapter)
    seq.block_table = blocks
    return seq


@pytest.mark.parametrize(
    "kernel",
    ["torch", pytest.param("cpu", marks=needs_cc), pytest.param("triton", marks=triton_tests)],
)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_mixed_batch_matches_peft_per_request(arch: str, kernel: str, tmp_path: Path) -> None:
    model_dir = save_tiny_model(tmp_path / "model", arch)
    dirs = {
        name: save_adapter(model_dir, tmp_path / name, seed=i + 1, **cfg)
        for i, (name, cfg) in enumerate(ADAPTERS[arch].items())
    }
    runner = ModelRunner(
        str(model_dir),
        # "triton" runs both Triton backends (add_lora and attention) under the interpreter.
        ModelConfig(
            model=str(model_dir), attention_backend="triton" if kernel == "triton" else "torch"
        ),
        CacheConfig(block_size=BLOCK, num_blocks=64),
        LoRAConfig(max_loras=4, max_lora_rank=8, kernel=kernel),
    )
    slot_of = {}
    for slot, (name, folder) in enumerate(dirs.items(), start=1):
        adapter = load_adapter(name, folder, runner.lora.module_shapes(), limits=Limits(max_rank=8))
        runner.lora.load_slot(slot, adapter)
        slot_of[name] = slot
    free = iter(range(64))
    prompts = [([5, 6, 7, 8, 9, 10, 11], "attn"), ([3, 4, 5], None), (list(range(20, 30)), "all")]
    prompts.append(([30, 31], "attn"))
    seqs = [make_seq(p, a, [next(free) for _ in range(4)]) for p, a in prompts]

    def step(chunks: list[int]) -> dict[int, torch.Tensor]:
        scheduled = [ScheduledSeq(s, n) for s, n in zip(seqs, chunks, strict=True) if n]
        batch = build_batch(scheduled, slot_of, BLOCK, 4, torch.device("cpu"))
        logits = runner.forward(batch)
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        return {id(s): row for s, row in zip(batch.sample_seqs, logits, strict=True)}

    # Step 1 prefills three prompts and the first chunk of the third; step 2 decodes three
    # sequences while finishing the chunked prefill, attending to keys cached by step 1.
    first = step([7, 3, 6, 2])
    for seq in (seqs[0], seqs[1], seqs[3]):
        seq.append_token(40 + len(seq.token_ids))
    second = step([1, 1, 4, 1])
    checked = 0
    for seq in seqs:
        folder = dirs.get(seq.adapter)
        if id(seq) in first:
            expected = reference_logits(model_dir, folder, seq.prompt_token_ids)
            torch.testing.assert_close(first[id(seq)], expected, atol=1e-4, rtol=0)
            checked += 1
        expected = reference_logits(model_dir, folder, seq.token_ids)
        torch.testing.assert_close(second[id(seq)], expected, atol=1e-4, rtol=0)
        checked += 1
    assert checked == 7
