"""Fixtures for the adapter-checking tests: a tiny served model, a good PEFT adapter, a fresh
copy of it per test to corrupt, and ``check`` (``check_folder`` against that model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from adapter_edits import LIMITS, SERVED
from builders import save_adapter, save_tiny_model
from transformers import AutoModelForCausalLM

from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import Limits


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
    def run(folder: Path, limits: Limits = LIMITS, served: str = SERVED) -> PeftConfig:
        return check_folder(folder, limits, served, module_shapes).config

    return run
