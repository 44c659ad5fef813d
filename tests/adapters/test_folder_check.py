"""check_folder's own rules on real PEFT adapters (the config: test_peft_config.py; the weights
file: test_safetensors_check.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE


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
