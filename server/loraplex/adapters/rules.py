"""The plain rules every untrusted adapter meets first: its file names, its name, what it may
cost (:class:`Limits`), how its JSON is read (strict) and which files are never opened.

No torch here: the stores and the archive reader use these rules without loading it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import PurePath

from loraplex.adapters.errors import AdapterValidationError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MiB = 1 << 20
# The largest value an adapter may put in a slot table: float16's largest finite number. Slot
# tables may be float16 (--lora-dtype) and hold ``scale * B``, so ``lora_alpha``, every ``A``
# value and every ``scale * B`` value stay within it; a larger one would be an inf in the table,
# and inf keys and values were how one tenant poisoned everyone's KV cache.
MAX_LORA_VALUE = 65504.0

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
# Weights in these formats are pickles (or code): opening them can execute arbitrary code.
FORBIDDEN_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".py"})

__all__ = [
    "CONFIG_FILE",
    "FORBIDDEN_SUFFIXES",
    "MAX_LORA_VALUE",
    "NAME_PATTERN",
    "WEIGHTS_FILE",
    "Limits",
    "MiB",
    "refuse_pickles",
    "strict_json",
    "validate_name",
]


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


def validate_name(name: object) -> str:
    """An adapter name is 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit.

    Names become folder names and object keys, so nothing that could form a path ("/", "\\",
    "..", a leading dot, a newline) is allowed.
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None or name in (".", ".."):
        raise AdapterValidationError(
            f"invalid adapter name {name!r}: use 1-64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def refuse_pickles(what: str, filename: str) -> None:
    """Refuse a file by its name alone when it is a pickled checkpoint or code: such a file is
    never opened, since loading it runs code. ``what`` names it in the message."""
    if PurePath(filename).suffix.lower() in FORBIDDEN_SUFFIXES:
        raise AdapterValidationError(
            f"{what}: only safetensors weights are accepted; pickled checkpoints are never "
            "loaded and code is never run"
        )


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
