"""Adapter folders for the store tests: the store treats the files as opaque bytes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

CONFIG, WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "loraplex.json"


def source(tmp_path: Path, tag: str) -> Path:
    """An adapter folder whose weights bytes are ``tag`` (plus a README the store ignores)."""
    folder = tmp_path / f"src-{tag}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / CONFIG).write_text(json.dumps({"peft_type": "LORA", "tag": tag}))
    (folder / WEIGHTS).write_bytes(tag.encode() * 100)
    (folder / "README.md").write_text("hi")
    return folder


def weights(folder: Path) -> bytes:
    return (folder / WEIGHTS).read_bytes()


def work_dirs(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]
