"""What one untrusted adapter may cost (:class:`Limits`) and how its JSON is read (strict).

Shared by the config rules (``validation.py``) and the weights checks (``safetensors_check.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from loraplex.lora.errors import AdapterValidationError

MiB = 1 << 20

__all__ = ["Limits", "MiB", "strict_json"]


@dataclass(frozen=True)
class Limits:
    """Size and content limits for one adapter; every value bounds the work a client can cause."""

    max_body_bytes: int = 512 * MiB  # an upload (archive) or all files of one adapter
    max_file_bytes: int = 256 * MiB  # one file, e.g. adapter_model.safetensors
    max_config_bytes: int = 64 * 1024  # adapter_config.json
    max_header_bytes: int = 1 * MiB  # the safetensors JSON header
    max_tensors: int = 4096
    max_rank: int = 256  # the server passes --max-lora-rank
    allow_base_mismatch: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "allow_base_mismatch" and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"Limits.{f.name} must be a positive integer, got {value!r}")


def strict_json(data: bytes, what: str) -> object:
    """UTF-8 JSON without NaN/Infinity and without duplicate keys (which parsers resolve
    differently: the value we check must be the value that is used)."""

    def no_constant(token: str) -> object:
        raise ValueError(f"{token} is not allowed")

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"duplicate key {key!r}")
            obj[key] = value
        return obj

    try:
        return json.loads(
            data.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=no_duplicates
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise AdapterValidationError(f"{what} is not valid strict JSON: {exc}") from exc
