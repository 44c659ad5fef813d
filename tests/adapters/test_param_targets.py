"""PEFT's ``target_parameters`` (MoE expert tensors and routers): the keys PEFT saves them
under, the per-expert factors read back equal to PEFT's own delta weights, and what is not
served refused with a message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import save_tiny_model
from transformers import AutoModelForCausalLM

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.param_targets import parameter_keys
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import CONFIG_FILE, Limits
from loraplex.adapters.weights import build_adapter
from loraplex.lora.manager import LoRAModelManager

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards

LIMITS = Limits(max_rank=16)
EXPERTS = ["experts.gate_up_proj", "experts.down_proj", "gate.weight"]


def config_of(**fields: object) -> PeftConfig:
    data = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, **fields}
    return PeftConfig.parse(json.dumps(data).encode(), LIMITS, "")


def test_nested_wrappers_map_to_their_parameters() -> None:
    """Targeted parameters of one module nest, the first registered innermost."""
    shapes = {
        "m.0.q_proj": (8, 8),
        "m.0.experts.gate_up_proj": (4, 8, 16),
        "m.0.experts.down_proj": (4, 8, 8),
        "m.0.gate.weight": (1, 8, 4),
    }
    both = config_of(target_parameters=EXPERTS)
    assert parameter_keys(both, shapes) == {
        "m.0.experts.base_layer": "m.0.experts.gate_up_proj",
        "m.0.experts": "m.0.experts.down_proj",
        "m.0.gate": "m.0.gate.weight",
    }
    down_only = config_of(target_parameters=["down_proj"])
    assert parameter_keys(down_only, shapes) == {"m.0.experts": "m.0.experts.down_proj"}
    assert config_of(target_parameters=["q_proj.weight"]).target_modules == ()


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    model_dir = save_tiny_model(tmp_path_factory.mktemp("qwen3_moe"), "qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    shapes = LoRAModelManager(model, num_slots=1, max_rank=16).module_shapes()
    return model_dir, shapes


def peft_adapter(model_dir: Path, out: Path, **lora: object):
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
    peft.save_pretrained(out)
    return peft


def test_expert_and_router_factors_equal_peft_delta_weights(moe, tmp_path: Path) -> None:
    model_dir, shapes = moe
    peft = peft_adapter(
        model_dir, tmp_path / "a", r=4, lora_alpha=8, target_modules=["q_proj"],
        target_parameters=EXPERTS, rank_pattern={"down_proj": 2}, alpha_pattern={"gate.weight": 3},
    )  # fmt: skip
    adapter = build_adapter("a", check_folder(tmp_path / "a", LIMITS, "", shapes))
    experts_of = {}
    for name, module in peft.named_modules():
        if type(module).__name__ == "ParamWrapper":
            owner = name.removeprefix("base_model.model.").replace(".base_layer", "")
            experts_of[f"{owner}.{module.parameter_name}"] = module.get_delta_weight("default")
    assert len(experts_of) == 6 and set(experts_of) < set(adapter.modules)
    for path, delta in experts_of.items():
        w = adapter.modules[path]
        ours = w.scale * (w.b @ w.a)  # [E, out, in]
        if path.endswith("gate.weight"):
            ours = ours[0]  # PEFT's router delta is one [E, H] matrix
        torch.testing.assert_close(ours, delta, rtol=1e-6, atol=1e-7)
    assert adapter.modules["model.layers.0.mlp.experts.down_proj"].rank == 2
    assert adapter.modules["model.layers.0.mlp.gate.weight"].scale == 3 / 4
    assert "model.layers.1.self_attn.q_proj" in adapter.modules


def test_unserved_parameter_is_refused_naming_it(moe, tmp_path: Path) -> None:
    model_dir, shapes = moe
    peft_adapter(
        model_dir, tmp_path / "emb", r=4, lora_alpha=8, target_parameters=["embed_tokens.weight"]
    )
    with pytest.raises(AdapterValidationError, match=r"'model\.embed_tokens'.*target_parameters"):
        check_folder(tmp_path / "emb", LIMITS, "", shapes)


def test_a_file_that_disagrees_with_its_config_is_refused(moe, tmp_path: Path) -> None:
    """Weights of both expert tensors under a config naming one: the nesting says otherwise."""
    model_dir, shapes = moe
    peft_adapter(model_dir, tmp_path / "x", r=4, lora_alpha=8, target_parameters=EXPERTS[:2])
    config = json.loads((tmp_path / "x" / CONFIG_FILE).read_text())
    config["target_parameters"] = ["experts.down_proj"]
    (tmp_path / "x" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(AdapterValidationError, match=r"experts\.base_layer"):
        check_folder(tmp_path / "x", LIMITS, "", shapes)
