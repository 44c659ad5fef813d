"""The base model's weight format (engine/model/quantization.py): detected from a folder's
config.json or taken from --quantization, and refused at start, with what to do named, where
this server or this machine cannot run it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loraplex import cli
from loraplex.config import ModelConfig
from loraplex.engine.model.quantization import (
    QUANT_EXTRA,
    QuantFormat,
    QuantizationError,
    resolve_quantization,
)

pytest.importorskip("bitsandbytes")


def folder_with(tmp_path: Path, quantization: dict | None) -> Path:
    """A model folder whose config.json carries ``quantization`` (None: a float model)."""
    config = {"model_type": "llama"}
    if quantization is not None:
        config["quantization_config"] = quantization
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


BNB_4BIT = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
BNB_8BIT = {"quant_method": "bitsandbytes", "load_in_8bit": True}


def test_a_float_folder_is_served_as_it_is_or_quantized_by_the_flag(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, None)
    assert resolve_quantization(None, folder, "cpu") is None
    found = resolve_quantization("bitsandbytes", folder, "cpu")
    assert found == QuantFormat("bitsandbytes", "nf4", prequantized=False)
    assert found.name == "bitsandbytes-nf4"
    eight = resolve_quantization("bitsandbytes-8bit", None, "cpu")  # the default model
    assert (eight.name, eight.prequantized) == ("bitsandbytes-int8", False)


def test_a_folder_saved_quantized_is_detected_without_a_flag(tmp_path: Path) -> None:
    assert resolve_quantization(None, folder_with(tmp_path, BNB_4BIT), "cpu") == QuantFormat(
        "bitsandbytes", "nf4", prequantized=True
    )
    assert resolve_quantization(None, folder_with(tmp_path, BNB_8BIT), "cpu").label == "int8"
    # The same flag is accepted (nothing to do); another one is refused, naming both.
    assert resolve_quantization("bitsandbytes-8bit", tmp_path, "cpu").prequantized
    with pytest.raises(QuantizationError, match=r"does not match .* bitsandbytes-8bit int8"):
        resolve_quantization("bitsandbytes", tmp_path, "cpu")


@pytest.mark.parametrize("method", ["gptq", "awq", "compressed-tensors", "fp8"])
def test_gpu_formats_are_refused_on_the_cpu(tmp_path: Path, method: str) -> None:
    folder = folder_with(tmp_path, {"quant_method": method, "bits": 4})
    with pytest.raises(QuantizationError, match=rf"{method}.*need a CUDA device.*--device cuda"):
        resolve_quantization(None, folder, "cpu")


def test_unknown_and_damaged_quantization_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="'hqq', which loraplex does not serve"):
        resolve_quantization(None, folder_with(tmp_path, {"quant_method": "hqq"}), "cpu")
    neither = {"quant_method": "bitsandbytes"}
    with pytest.raises(QuantizationError, match="neither load_in_4bit nor load_in_8bit"):
        resolve_quantization(None, folder_with(tmp_path, neither), "cpu")
    with pytest.raises(QuantizationError, match="must be an object"):
        resolve_quantization(None, folder_with(tmp_path, "nf4"), "cpu")  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(QuantizationError, match="cannot be read"):
        resolve_quantization(None, tmp_path, "cpu")
    with pytest.raises(QuantizationError, match="--quantization must be one of"):
        resolve_quantization("int3", None, "cpu")
    with pytest.raises(ValueError, match="--quantization must be one of"):
        ModelConfig(quantization="awq")  # the config refuses it before anything runs


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(QuantizationError, match="needs bitsandbytes") as exc:
        resolve_quantization("bitsandbytes", None, "cpu")
    assert QUANT_EXTRA in str(exc.value)


def test_serve_refuses_before_starting(capsys, tmp_path: Path, monkeypatch) -> None:
    """The command line checks the format first: exit 2 with the reason, no model loaded."""
    gptq = folder_with(tmp_path, {"quant_method": "gptq", "bits": 4})
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--model", str(gptq)])
    assert exc.value.code == 2
    assert "need a CUDA device" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--load-format", "dummy", "--quantization", "bitsandbytes"])
    assert exc.value.code == 2
    assert QUANT_EXTRA in capsys.readouterr().err
