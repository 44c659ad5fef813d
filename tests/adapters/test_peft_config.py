"""Every rule of lora/validation.py on real PEFT adapters, each corrupted in one way:
names, adapter_config.json and the folder (the weights file: test_safetensors_check.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from adapter_edits import LIMITS, SERVED

from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.errors import AdapterValidationError
from loraplex.lora.validation import Limits, parse_config, validate_name

# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "tiny-a", "A.b_c-1", "v2.0", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        *("", ".", "..", ".hidden", "../x", "a/b", "a\\b", "/etc", "x" * 65, "-a", "_a"),
        *("a b", "a\n", "a\0", "é", None, 5),
    ],
)
def test_names_that_could_form_paths_are_refused(name: object) -> None:
    with pytest.raises(AdapterValidationError, match="invalid adapter name"):
        validate_name(name)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rank"):
        Limits(max_rank=0)


# ---- adapter_config.json -------------------------------------------------------------------


def test_good_adapter_passes_and_returns_config(adapter: Path, check) -> None:
    assert (adapter / "README.md").exists()  # written by PEFT, ignored
    config = check(adapter)
    assert config["r"] == 4 and config["peft_type"] == "LORA"


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
        ({"target_parameters": ["w"]}, "target_parameters"),
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
    ],
)
def test_config_rules(good: Path, changes: dict, message: str) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        parse_config(config_bytes(good, **changes), LIMITS, SERVED)


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
        parse_config(text, Limits(max_config_bytes=1 << 20), SERVED)


def test_config_size_is_limited(good: Path) -> None:
    data = config_bytes(good, description="x" * 70_000)
    with pytest.raises(AdapterValidationError, match="limit is 65536"):
        parse_config(data, LIMITS, SERVED)


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
    parse_config(config_bytes(good, base_model_name_or_path=base), LIMITS, served)


def test_base_model_mismatch_is_refused_unless_allowed(good: Path, caplog) -> None:
    data = config_bytes(good, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(AdapterValidationError, match=r"SmolLM2-135M-Instruct.*tiny-llama"):
        parse_config(data, LIMITS, SERVED)
    with caplog.at_level(logging.WARNING):
        parse_config(data, Limits(max_rank=16, allow_base_mismatch=True), SERVED)
    assert "SmolLM2-135M-Instruct" in caplog.text


# ---- the folder ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["adapter_model.bin", "pytorch_model.pt", "x.pth", "x.pkl", "x.ckpt", "setup.py"]
)
def test_pickles_and_code_are_refused(adapter: Path, check, name: str) -> None:
    (adapter / name).write_bytes(b"\x80\x04")
    with pytest.raises(AdapterValidationError, match=r"only safetensors .* code is never run"):
        check(adapter)


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE])
def test_both_files_are_required(adapter: Path, check, missing: str) -> None:
    (adapter / missing).unlink()
    with pytest.raises(AdapterValidationError, match=f"{missing} is missing"):
        check(adapter)


def test_not_a_folder_is_refused(tmp_path: Path, check) -> None:
    with pytest.raises(AdapterValidationError, match="not an adapter folder"):
        check(tmp_path / "nothing")


def test_large_config_file_is_refused(adapter: Path, check) -> None:
    (adapter / CONFIG_FILE).write_bytes(b" " * 70_000)
    with pytest.raises(AdapterValidationError, match="larger than 65536 bytes"):
        check(adapter)
