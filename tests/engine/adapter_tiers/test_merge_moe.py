"""An adapter of MoE expert tensors or routers is served unmerged: merging it is a 400 that
names what cannot be merged (never a half-merged adapter), and it keeps serving dynamically."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from tiny_models import save_tiny_model
from transformers import AutoModelForCausalLM

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig
from loraplex.engine.build import build_engine
from loraplex.engine.errors import ParameterError
from loraplex.engine.request.params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards


def test_merging_an_expert_adapter_is_refused(tmp_path: Path) -> None:
    model_dir = save_tiny_model(tmp_path / "model", "qwen3_moe")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False,
                      target_parameters=["experts.down_proj"])  # fmt: skip
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapters" / "experts")
    engine = build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=32),
            cache=CacheConfig(block_size=4, num_blocks=16),
            lora=LoRAConfig(max_loras=1, max_lora_rank=8, adapters_dir=str(tmp_path / "adapters")),
        )
    )
    with pytest.raises(ParameterError, match=r"experts\.down_proj.*cannot be merged") as caught:
        engine.tiers.merge_now("experts")
    assert caught.value.param == "name"
    assert engine.tiers.merges.serving() == []  # nothing half-merged
    engine.add_request("0", [5, 6, 7], SamplingParams(max_tokens=2, temperature=0), "experts")
    tokens = [
        t for _ in range(10) if engine.has_unfinished() for o in engine.step() for t in o.token_ids
    ]
    assert len(tokens) == 2
