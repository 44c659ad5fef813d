"""LoRA on a quantized base (QLoRA's setting) on the tiny model: a mixed batch of adapters and
the bare base gives PEFT's greedy tokens on the same quantized base, quantized at load or read
from a folder saved quantized; a merge dequantizes, and unmerging leaves the quantized weights
and the outputs bit for bit as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import run
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine

pytest.importorskip("bitsandbytes")

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 33)), [40, 41, 42], [50] * 9, [60, 61]]
ADAPTERS = ["attn", None, "all", "all", "attn", None]
TOKENS = 10
GREEDY = {"max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
METHODS = {
    "bitsandbytes": lambda: BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    ),
    "bitsandbytes-8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def saved(store: tuple[Path, Path], tmp_path_factory) -> dict[str, Path]:
    """The tiny model saved quantized by transformers, one folder per method."""
    model_dir, _ = store
    folders = {}
    for method, config in METHODS.items():
        model = load_base(model_dir, config())
        folder = tmp_path_factory.mktemp(method) / model_dir.name  # same name: same base
        model.save_pretrained(folder)
        shutil.copy(model_dir / "tokenizer.json", folder)
        shutil.copy(model_dir / "tokenizer_config.json", folder)
        folders[method] = folder
    return folders


def load_base(folder: Path, config: BitsAndBytesConfig | None = None):
    """``folder``'s model quantized by ``config`` (None: as saved)."""
    options = {} if config is None else {"quantization_config": config}
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map="cpu", **options
    ).eval()


def engine_on(folder: Path, adapters: Path, quantization: str | None) -> LLMEngine:
    return build_engine(
        Config(
            model=ModelConfig(model=str(folder), max_model_len=64, quantization=quantization),
            cache=CacheConfig(block_size=4, num_blocks=64),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
            lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(adapters)),
        )
    )


def peft_greedy(base, adapters: Path) -> list[list[int]]:
    """PEFT's greedy tokens for every request, one at a time, on one quantized base."""
    model = PeftModel.from_pretrained(base, adapters / "attn", adapter_name="attn")
    model.load_adapter(adapters / "all", adapter_name="all")
    expected = []
    for prompt, adapter in zip(PROMPTS, ADAPTERS, strict=True):
        ids = torch.tensor([prompt])
        args = {"max_new_tokens": TOKENS, "do_sample": False, "eos_token_id": None}
        with torch.no_grad():
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(input_ids=ids, pad_token_id=0, **args)
            else:
                model.set_adapter(adapter)
                out = model.generate(input_ids=ids, pad_token_id=0, **args)
        expected.append(out[0, len(prompt) :].tolist())
    return expected


@pytest.mark.parametrize("method", list(METHODS))
def test_mixed_batch_greedy_equals_peft_on_the_quantized_base(store, saved, method) -> None:
    model_dir, adapters = store
    expected = peft_greedy(load_base(saved[method]), adapters)
    in_flight = engine_on(model_dir, adapters, method)
    from_folder = engine_on(saved[method], adapters, None)
    assert in_flight.runner.base_format == from_folder.runner.base_format
    assert (
        in_flight.runner.base_format
        == ("bitsandbytes-nf4", "bitsandbytes-int8")[method != "bitsandbytes"]
    )
    requests = list(zip(PROMPTS, ADAPTERS, strict=True))
    assert run(in_flight, requests, **GREEDY) == expected
    assert run(from_folder, requests, **GREEDY) == expected
    # Not vacuous: the seven-projection adapter changes the text its prompts get on the base
    # (the q_proj-only one is too weak to, on some prompts).
    base_tokens = run(in_flight, [(p, None) for p in PROMPTS], **GREEDY)
    rows = zip(expected, base_tokens, ADAPTERS, strict=True)
    assert all(e != b for e, b, a in rows if a == "all")


def quantized_state(engine: LLMEngine) -> list[torch.Tensor]:
    """Every stored tensor of the base's quantized projections (codes, scales)."""
    tensors = []
    for layer in engine.runner.lora.layers.values():
        weight = layer.base.weight
        tensors.append(weight.data.clone())
        if hasattr(weight, "quant_state"):  # 4-bit: per-block scales
            tensors.append(weight.quant_state.absmax.clone())
        else:  # 8-bit: per-row scales, which the layer takes over at its first forward
            tensors.append(layer.base.state.SCB.clone())
    return tensors


@pytest.mark.parametrize("method", list(METHODS))
def test_merge_dequantizes_and_unmerge_restores_the_quantized_base(store, method) -> None:
    model_dir, adapters = store
    engine = engine_on(model_dir, adapters, method)
    requests = [(PROMPTS[0], None), (PROMPTS[2], "all")]
    before = run(engine, requests, **GREEDY)
    weights = quantized_state(engine)
    card = engine.tiers.merge_now("all")
    # One copy per module the adapter targets, in the compute dtype (float32), not requantized.
    shapes = engine.runner.lora.module_shapes()
    assert engine.tiers.merges.nbytes(card.key) == 4 * sum(i * o for i, o in shapes.values())
    merged = run(engine, [(PROMPTS[2], "all")], **GREEDY)
    assert merged == before[1:]  # dequantized W0 + scale·B·A gives the adapter's tokens
    engine.tiers.unmerge("all")
    assert not engine.tiers.merges.serves(card.key)
    after = quantized_state(engine)
    assert all(torch.equal(a, b) for a, b in zip(weights, after, strict=True))
    assert run(engine, requests, **GREEDY) == before
