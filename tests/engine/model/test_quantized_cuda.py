"""Quantized bases on a CUDA device (issue 20): bitsandbytes NF4 with its CUDA kernels, and a
GPU-only format (transformers' block FP8) read from a folder saved quantized, each against
PEFT on the same quantized base; merging into FP8 answers a refusal naming why. These run
only where a GPU is lent (and bitsandbytes / PEFT are installed there)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, word_tokenizer
from engine_helpers import run

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.adapter_tiers.merged import MergeRefusedError
from loraplex.engine.build import build_engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [40, 41, 42]]
ADAPTERS = ["a", None, "a"]
GREEDY = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, Path]:
    """A random Llama whose projections are multiples of 128 (FP8's blocks) and one PEFT
    adapter on all seven projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    config = LlamaConfig(
        vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    word_tokenizer().save_pretrained(root / "model")
    base = LlamaForCausalLM.from_pretrained(root / "model")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_SEVEN, init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(root / "adapters" / "a")
    return root / "model", root / "adapters"


def engine_on(folder: Path, adapters: Path, quantization: str | None = None):
    return build_engine(
        Config(
            model=ModelConfig(
                model=str(folder), dtype="bfloat16", device="cuda", max_model_len=64,
                quantization=quantization,
            ),
            cache=CacheConfig(block_size=16, num_blocks=16),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
            lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(adapters)),
        )
    )  # fmt: skip


def peft_greedy(folder: Path, adapters: Path, **load: object) -> list[list[int]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.bfloat16, device_map={"": "cuda"}, **load
    ).eval()
    model = PeftModel.from_pretrained(base, adapters / "a")
    expected = []
    for prompt, adapter in zip(PROMPTS, ADAPTERS, strict=True):
        ids = torch.tensor([prompt], device="cuda")
        args = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
        with torch.no_grad():
            if adapter is None:
                with model.disable_adapter():
                    out = model.generate(input_ids=ids, **args)
            else:
                out = model.generate(input_ids=ids, **args)
        expected.append(out[0, len(prompt) :].tolist())
    return expected


def test_nf4_on_cuda_equals_peft(wide) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    model_dir, adapters = wide
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    engine = engine_on(model_dir, adapters, "bitsandbytes")
    assert engine.runner.base_format == "bitsandbytes-nf4"
    got = run(engine, list(zip(PROMPTS, ADAPTERS, strict=True)), **GREEDY)
    assert got == peft_greedy(model_dir, adapters, quantization_config=nf4)
    engine.tiers.merge_now("a")  # dequantized W0 + s·B·A, kept in bf16
    assert run(engine, [(PROMPTS[0], "a")], **GREEDY) == got[:1]


def test_fp8_folder_is_served_and_refuses_merges(wide, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    model_dir, adapters = wide
    folder = tmp_path / model_dir.name
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, device_map={"": "cuda"},
        quantization_config=FineGrainedFP8Config(),
    )  # fmt: skip
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder)
    engine = engine_on(folder, adapters)
    assert engine.runner.base_format == "fp8"
    got = run(engine, list(zip(PROMPTS, ADAPTERS, strict=True)), **GREEDY)
    assert got == peft_greedy(folder, adapters)
    with pytest.raises(MergeRefusedError, match="float8"):
        engine.tiers.merge_now("a")
