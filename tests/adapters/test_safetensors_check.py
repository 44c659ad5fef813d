"""The checks of adapter_model.safetensors (adapters/safetensors_check.py, reached through
check_folder) on real PEFT adapters, each corrupted in one way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adapter_edits import Q_A, Q_B, edit_config, edit_weights, write_raw
from builders import ALL_SEVEN, save_adapter
from safetensors.torch import load_file, save_file

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import WEIGHTS_FILE, Limits

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
