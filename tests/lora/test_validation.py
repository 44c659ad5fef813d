"""Every rule of lora/validation.py on real PEFT adapters, each corrupted in one way."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, save_adapter, save_tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.errors import AdapterValidationError
from loraplex.lora.validation import Limits, check_folder, parse_config, validate_name

SERVED = "tiny-llama"
LIMITS = Limits(max_rank=16)
LAYER = "base_model.model.model.layers.0.self_attn"
Q_A, Q_B = f"{LAYER}.q_proj.lora_A.weight", f"{LAYER}.q_proj.lora_B.weight"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / SERVED)


@pytest.fixture(scope="module")
def module_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    }


@pytest.fixture(scope="module")
def good(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapters") / "good"
    return save_adapter(
        model_dir, out, seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )


@pytest.fixture
def adapter(good: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good adapter, for one test to corrupt."""
    return Path(shutil.copytree(good, tmp_path / "adapter"))


@pytest.fixture
def check(module_shapes: dict[str, tuple[int, int]]):
    def run(folder: Path, limits: Limits = LIMITS, served: str = SERVED) -> dict:
        return check_folder(folder, limits, served, module_shapes).config

    return run


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def edit_weights(folder: Path, **changes: torch.Tensor | None) -> None:
    """Replace (or with None, drop) tensors; keys use '__' for '.' relative to LAYER."""
    tensors = load_file(folder / WEIGHTS_FILE)
    for short, tensor in changes.items():
        key = f"{LAYER}.{short.replace('__', '.')}"
        if tensor is None:
            del tensors[key]
        else:
            tensors[key] = tensor
    save_file(tensors, folder / WEIGHTS_FILE)


def write_raw(folder: Path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(body) if length is None else length
    (folder / WEIGHTS_FILE).write_bytes(size.to_bytes(8, "little") + body + data)


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


# ---- adapter_model.safetensors --------------------------------------------------------------


def test_rank_pattern_gives_per_module_ranks(model_dir: Path, tmp_path: Path, check) -> None:
    """All seven projections (GQA: k/v are 64 -> 32), v_proj at rank 2: shapes follow r_m."""
    folder = save_adapter(
        model_dir, tmp_path / "rp", seed=2, r=4, lora_alpha=8,
        target_modules=ALL_SEVEN, rank_pattern={"v_proj": 2},
    )  # fmt: skip
    check(folder)
    edit_config(folder, rank_pattern={})
    with pytest.raises(AdapterValidationError, match=r"v_proj.*lora_A has shape \[2, 64\]"):
        check(folder)


def test_target_modules_regex_uses_fullmatch(adapter: Path, check) -> None:
    edit_config(adapter, target_modules=r".*\.(q_proj|v_proj)")
    check(adapter)
    edit_config(adapter, target_modules="q_proj|v_proj")  # PEFT: a string must match the full name
    with pytest.raises(AdapterValidationError, match="not in target_modules"):
        check(adapter)


def test_weights_of_untargeted_module_are_refused(adapter: Path, check) -> None:
    edit_config(adapter, target_modules=["v_proj"])
    with pytest.raises(AdapterValidationError, match=r"q_proj.*not in target_modules"):
        check(adapter)


@pytest.mark.parametrize("excluded", [["layers.1.self_attn.q_proj"], r".*\.1\.self_attn\.q_proj"])
def test_weights_of_excluded_module_are_refused(adapter: Path, check, excluded) -> None:
    """PEFT would ignore them; this server would apply them: refuse instead."""
    edit_config(adapter, exclude_modules=["layers.0.mlp.up_proj"])
    check(adapter)
    edit_config(adapter, exclude_modules=excluded)
    with pytest.raises(AdapterValidationError, match=r"layers\.1\.self_attn\.q_proj.*exclude"):
        check(adapter)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"q_proj__lora_A__weight": torch.zeros(4, 64, dtype=torch.int8)}, "dtype 'I8'"),
        ({"q_proj__lora_A__weight": torch.zeros(4, 32)}, r"shape \[4, 32\], expected \[4, 64\]"),
        ({"q_proj__lora_B__weight": torch.zeros(64, 8)}, r"expected \[64, 4\]"),
        ({"q_proj__lora_B__weight": None}, "needs both lora_A and lora_B"),
        ({"q_proj__weight": torch.zeros(64, 64)}, "unexpected tensor"),
        ({"q_proj__lora_B__bias": torch.zeros(64)}, "unexpected tensor"),
        ({"q_proj__lora_A__default__weight": torch.zeros(4, 64)}, "appears twice"),
        ({"k_proj__lora_A__weight": torch.zeros(4, 64)}, "not in target_modules"),
        ({"q_proj__lora_A__weight": torch.full((4, 64), float("nan"))}, "NaN or infinite"),
        ({"q_proj__lora_B__weight": torch.full((64, 4), float("inf"))}, "NaN or infinite"),
    ],
)
def test_weight_rules(adapter: Path, check, changes: dict, message: str) -> None:
    edit_weights(adapter, **changes)
    with pytest.raises(AdapterValidationError, match=message):
        check(adapter)


@pytest.mark.parametrize("module", ["model.layers.9.self_attn.q_proj", "lm_head"])
def test_modules_outside_the_base_model_are_refused(adapter: Path, check, module: str) -> None:
    tensors = load_file(adapter / WEIGHTS_FILE)
    tensors[f"base_model.model.{module}.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, adapter / WEIGHTS_FILE)
    with pytest.raises(AdapterValidationError, match="not a projection of the base model"):
        check(adapter)


def test_no_lora_weights_is_refused(adapter: Path, check) -> None:
    save_file({}, adapter / WEIGHTS_FILE)
    with pytest.raises(AdapterValidationError, match="no LoRA weights"):
        check(adapter)


def a_b_header(**extra: object) -> dict:
    """A raw header for q_proj's A [4, 64] and B [64, 4] in F32 (1024 bytes each)."""
    return {
        Q_A: {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]},
        Q_B: {"dtype": "F32", "shape": [64, 4], "data_offsets": [1024, 2048]},
        **extra,
    }


def one_entry(shape: list[int], offsets: list[int]) -> dict:
    return {Q_A: {"dtype": "F32", "shape": shape, "data_offsets": offsets}}


def test_raw_header_with_string_metadata_passes(adapter: Path, check) -> None:
    write_raw(adapter, a_b_header(__metadata__={"format": "pt"}), bytes(2048))
    check(adapter)


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (b"{}", b"", 1 << 40, "exceeds the limit"),
        (b"{}", b"", 1000, "runs past the file end"),
        (b'{"a": 1, "a": 2}', b"", None, "duplicate key"),
        (b"not json", b"", None, "strict JSON"),
        (b"[]", b"", None, "must be a JSON object"),
        (a_b_header(__metadata__={"n": 1}), bytes(2048), None, "__metadata__"),
        ({Q_A: {"dtype": "F32", "shape": [4, 64]}}, b"", None, "malformed header entry"),
        (one_entry([4, 64], [0, 10**9]), b"", None, "outside"),
        (one_entry([4, -64], [0, 0]), b"", None, "integers"),
        (one_entry([4, 64], [0, True]), b"", None, "integers"),
        (one_entry([4, 64], [0, 8]), bytes(8), None, "do not hold"),
        (a_b_header(), bytes(2056), None, "8 trailing data bytes"),
    ],
)  # fmt: skip
def test_header_rules(adapter: Path, check, header, data: bytes, length, message: str) -> None:
    write_raw(adapter, header, data, length)
    with pytest.raises(AdapterValidationError, match=message):
        check(adapter)


def test_overlapping_tensors_are_refused(adapter: Path, check) -> None:
    header = a_b_header()
    header[Q_B]["data_offsets"] = [512, 1536]
    write_raw(adapter, header, bytes(2048))
    with pytest.raises(AdapterValidationError, match="overlaps another or leaves a gap"):
        check(adapter)


def test_too_short_file_is_refused(adapter: Path, check) -> None:
    (adapter / WEIGHTS_FILE).write_bytes(b"\x01\x02")
    with pytest.raises(AdapterValidationError, match="too short"):
        check(adapter)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(max_rank=16, max_tensors=2), "holds 8 tensors; the limit is 2"),
        (Limits(max_rank=16, max_file_bytes=1000), "the limit is 1000"),
        (Limits(max_rank=16, max_header_bytes=100), "exceeds the limit of 100"),
        (Limits(max_rank=2), "1..2"),
    ],
)
def test_limits_are_enforced(adapter: Path, check, limits: Limits, message: str) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        check(adapter, limits)


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
