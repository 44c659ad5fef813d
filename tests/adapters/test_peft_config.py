"""Every rule of adapters/peft_config.py on a real PEFT adapter's config, each corrupted in one
way, and the per-module answers of the parsed config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from adapter_edits import LIMITS, SERVED

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import CONFIG_FILE, Limits


def test_good_adapter_passes_and_returns_config(adapter: Path, check) -> None:
    assert (adapter / "README.md").exists()  # written by PEFT, ignored
    config = check(adapter)
    assert isinstance(config, PeftConfig)
    assert (config.r, config.lora_alpha) == (4, 8.0) and config.base_model.endswith(SERVED)
    assert set(config.target_modules) == {"q_proj", "v_proj"}


def config_bytes(good: Path, **changes: object) -> bytes:
    config = json.loads((good / CONFIG_FILE).read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del config[key]
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": ...}, "peft_type"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"r": ...}, "r must be"),
        ({"r": 0}, "r must be"),
        ({"r": 17}, "1..16"),
        ({"r": True}, "r must be"),
        ({"r": 4.0}, "r must be"),
        ({"r": "4"}, "r must be"),
        ({"lora_alpha": ...}, "lora_alpha"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_alpha": -8}, "lora_alpha"),
        ({"lora_alpha": "8"}, "lora_alpha"),
        ({"lora_alpha": True}, "lora_alpha"),
        ({"bias": "all"}, "bias"),
        ({"bias": "lora_only"}, "bias"),
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"lora_bias": True}, "lora_bias"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
        ({"alora_invocation_tokens": [1, 2]}, "alora_invocation_tokens"),
        ({"target_parameters": "experts.down_proj"}, "target_parameters must be a list"),
        ({"target_parameters": ["experts.down_proj", 3]}, "target_parameters must be a list"),
        ({"target_parameters": ["x" * 300]}, "target_parameters must be a list"),
        ({"trainable_token_indices": [1]}, "trainable_token_indices"),
        ({"rank_pattern": []}, "rank_pattern must be an object"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"rank_pattern": {"q_proj": 32}}, "1..16"),
        ({"rank_pattern": {"q_proj": 4.5}}, "rank_pattern"),
        ({"rank_pattern": {"(": 4}}, "invalid regular expression"),
        ({"alpha_pattern": {"q_proj": -1}}, "alpha_pattern"),
        ({"alpha_pattern": {"q_proj": "x"}}, "alpha_pattern"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": None}, "target_modules"),
        ({"target_modules": [""]}, "target_modules"),
        ({"target_modules": [1]}, "target_modules"),
        ({"target_modules": "("}, "invalid regular expression"),
        ({"target_modules": "x" * 300}, "longer than"),
        ({"exclude_modules": [3]}, "exclude_modules"),
        ({"exclude_modules": "("}, "exclude_modules: invalid regular expression"),
        ({"base_model_name_or_path": 5}, "base_model_name_or_path"),
        ({"use_rslora": "false"}, "use_rslora must be true or false"),
        ({"use_rslora": 1}, "use_rslora must be true or false"),
    ],
)
def test_config_rules(good: Path, changes: dict, message: str) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        PeftConfig.parse(config_bytes(good, **changes), LIMITS, SERVED)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}', "NaN"),
        (b'{"peft_type": "LORA", "r": 4, "lora_alpha": Infinity}', "Infinity"),
        (b'{"peft_type": "LORA", "r": 4, "lora_alpha": 1e999}', "lora_alpha"),
        (b'{"peft_type": "LORA", "r": 4, "r": 64}', "duplicate key 'r'"),
        (b'["peft_type", "LORA"]', "JSON object"),
        (b'{"peft_type": "LORA"', "strict JSON"),
        (b'\xff\xfe{"r": 4}', "strict JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "config.json is"),
    ],
)
def test_config_must_be_strict_json(text: bytes, message: str) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        PeftConfig.parse(text, Limits(max_config_bytes=1 << 20), SERVED)


def test_config_size_is_limited(good: Path) -> None:
    data = config_bytes(good, description="x" * 70_000)
    with pytest.raises(AdapterValidationError, match="limit is 65536"):
        PeftConfig.parse(data, LIMITS, SERVED)


@pytest.mark.parametrize(
    ("base", "served"),
    [
        (
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "/root/.cache/loraplex/models/SmolLM2-135M-Instruct",
        ),
        ("/root/.cache/x/TINY-LLAMA/", "tiny-llama"),
        ("org/tiny-llama", "tiny-llama"),
        (None, "tiny-llama"),
    ],
)
def test_base_model_matches_by_last_component(good: Path, base: object, served: str) -> None:
    PeftConfig.parse(config_bytes(good, base_model_name_or_path=base), LIMITS, served)


def test_base_model_mismatch_is_refused_unless_allowed(good: Path, caplog) -> None:
    data = config_bytes(good, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(AdapterValidationError, match=r"SmolLM2-135M-Instruct.*tiny-llama"):
        PeftConfig.parse(data, LIMITS, SERVED)
    with caplog.at_level(logging.WARNING):
        PeftConfig.parse(data, Limits(max_rank=16, allow_base_mismatch=True), SERVED)
    assert "SmolLM2-135M-Instruct" in caplog.text


# ---- the parsed config's per-module answers ----------------------------------------------------

ATTN = "model.layers.0.self_attn"


def parsed(**fields: object) -> PeftConfig:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    return PeftConfig.parse(json.dumps(config | fields).encode(), LIMITS, "")


def test_patterns_give_rank_alpha_and_scale_per_module() -> None:
    config = parsed(
        rank_pattern={"v_proj": 2, r"layers\.0\.self_attn\.q_proj": 16, "q_proj": 8},
        alpha_pattern={"k_proj": 32},
    )
    assert config.rank_of(f"{ATTN}.q_proj") == 16  # the first key that matches wins
    assert config.rank_of("model.layers.1.self_attn.q_proj") == 8
    assert config.rank_of(f"{ATTN}.v_proj") == 2 and config.rank_of(f"{ATTN}.o_proj") == 4
    assert config.rank_of(f"{ATTN}.xv_proj") == 4  # a key matches whole dotted components
    assert config.scale_of(f"{ATTN}.v_proj") == 8 / 2
    assert config.scale_of(f"{ATTN}.k_proj") == 32 / 4
    assert parsed(use_rslora=True).scale_of(f"{ATTN}.q_proj") == 8 / 2  # alpha / sqrt(r)


@pytest.mark.parametrize(
    ("fields", "targeted", "not_targeted"),
    [
        ({}, [f"{ATTN}.q_proj", "q_proj"], [f"{ATTN}.k_proj", f"{ATTN}.xq_proj"]),
        ({"target_modules": "all-linear"}, [f"{ATTN}.k_proj"], []),
        ({"target_modules": r".*\.0\..*_proj"}, [f"{ATTN}.k_proj"], ["model.layers.1.mlp.up_proj"]),
        ({"exclude_modules": ["layers.0.self_attn.q_proj"]}, ["x.1.q_proj"], [f"{ATTN}.q_proj"]),
        ({"exclude_modules": r".*\.0\..*"}, ["x.1.q_proj"], [f"{ATTN}.q_proj"]),
    ],
)
def test_targets_and_exclusions(fields: dict, targeted: list, not_targeted: list) -> None:
    config = parsed(**fields)
    assert all(config.targets(m) for m in targeted)
    assert not any(config.targets(m) for m in not_targeted)


def test_a_regex_target_is_one_entry_on_the_card() -> None:
    assert parsed(target_modules=".*q_proj").target_names == (".*q_proj",)
    assert parsed(target_modules=["q_proj", "v_proj"]).target_names == ("q_proj", "v_proj")
