"""The engine tests' tiny model and its two adapters ("attn": q_proj r4; "all": seven
projections r8), built once per module."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import ALL_SEVEN, save_adapter, save_tiny_model


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("engine")
    model_dir = save_tiny_model(root / "model")
    adapters = root / "adapters"
    save_adapter(model_dir, adapters / "attn", 1, r=4, lora_alpha=8, target_modules=["q_proj"])
    save_adapter(model_dir, adapters / "all", 2, r=8, lora_alpha=8, target_modules=ALL_SEVEN)
    return model_dir, adapters
