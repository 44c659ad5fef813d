"""Edits that corrupt a copy of a good adapter in exactly one way, for the checking tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits

SERVED = "tiny-llama"
LIMITS = Limits(max_rank=16)
LAYER = "base_model.model.model.layers.0.self_attn"
Q_A, Q_B = f"{LAYER}.q_proj.lora_A.weight", f"{LAYER}.q_proj.lora_B.weight"


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
