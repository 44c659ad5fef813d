"""Rules for adapters that arrive from outside (uploads, stores): names, config, weights file.

An uploaded adapter is untrusted input, so every rule refuses with :class:`AdapterValidationError`
and a message naming the problem before any tensor reaches the engine:

- names are plain identifiers, so no path can ever be formed from one;
- the config is strict JSON describing a plain LoRA that this server applies exactly;
- the safetensors header is read first (size, tensor count, dtypes, offsets, shapes against the
  base model), so a hostile file costs a few small reads; only then is the file read (once:
  :func:`check_folder` returns those tensors for loading) and checked for NaN/Inf
  (``safetensors_check.py``);
- pickled checkpoints (``.bin``, ``.pt`` ...) and code are never opened: loading them runs code.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE, WeightsFile
from loraplex.lora.errors import AdapterValidationError
from loraplex.lora.limits import Limits, strict_json
from loraplex.lora.safetensors_check import check_safetensors

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
MAX_PATTERN_CHARS = 256  # rank_pattern / alpha_pattern / target_modules regexes
# PEFT options that change what the adapter computes at inference: any truthy value is refused.
UNSUPPORTED = (
    "use_dora",
    "modules_to_save",
    "lora_bias",
    "layer_replication",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "target_parameters",
    "trainable_token_indices",
    "arrow_config",
)
# Weights in these formats are pickles (or code): opening them can execute arbitrary code.
FORBIDDEN_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".py"})

__all__ = [
    "FORBIDDEN_SUFFIXES",
    "NAME_PATTERN",
    "UNSUPPORTED",
    "CheckedFolder",
    "Limits",
    "check_folder",
    "check_safetensors",
    "parse_config",
    "strict_json",
    "validate_name",
]


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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_rank(what: str, value: object, limits: Limits) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limits.max_rank:
        raise AdapterValidationError(
            f"{what} must be an integer in 1..{limits.max_rank} (the server's maximum rank), "
            f"got {value!r}"
        )


def _check_regex(what: str, pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise AdapterValidationError(f"{what}: pattern longer than {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AdapterValidationError(f"{what}: invalid regular expression {pattern!r}") from exc


def _check_patterns(config: dict, limits: Limits) -> None:
    """``rank_pattern`` / ``alpha_pattern``: {regex: positive number}; ranks within the limit."""
    for field in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(field)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise AdapterValidationError(f"{field} must be an object, got {patterns!r}")
        for key, value in patterns.items():
            _check_regex(f"{field} key {key!r}", key)
            if field == "rank_pattern":
                _check_rank(f"rank_pattern[{key!r}]", value, limits)
            elif not _is_number(value) or value <= 0:
                raise AdapterValidationError(
                    f"alpha_pattern[{key!r}] must be a positive number, got {value!r}"
                )


def _check_targets(targets: object, field: str = "target_modules") -> None:
    """A non-empty list of module names, or one regex matched against full module names."""
    if isinstance(targets, str) and targets:
        _check_regex(field, targets)
        return
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise AdapterValidationError(
            f"{field} must be a non-empty list of module names or a regex, got {targets!r}"
        )


def _last_component(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _check_base(base: object, served_model: str, limits: Limits) -> None:
    """An adapter trained on another base model computes garbage here: refuse unless allowed.

    Hub ids and local paths compare by their last component, case-insensitively.
    """
    if base is None or base == "" or not served_model:
        return
    if not isinstance(base, str):
        raise AdapterValidationError(f"base_model_name_or_path must be a string, got {base!r}")
    trained, served = _last_component(base), _last_component(served_model)
    if trained.casefold() == served.casefold():
        return
    message = (
        f"adapter was trained on {trained!r} (base_model_name_or_path {base!r}) "
        f"but this server serves {served!r}"
    )
    if not limits.allow_base_mismatch:
        raise AdapterValidationError(message + " (start with --allow-base-mismatch to accept it)")
    log.warning("%s; accepted because base mismatches are allowed", message)


def parse_config(data: bytes, limits: Limits, served_model: str) -> dict:
    """Parse ``adapter_config.json`` and refuse anything this server cannot apply exactly."""
    if len(data) > limits.max_config_bytes:
        raise AdapterValidationError(
            f"{CONFIG_FILE} is {len(data)} bytes; the limit is {limits.max_config_bytes}"
        )
    config = strict_json(data, CONFIG_FILE)
    if not isinstance(config, dict):
        raise AdapterValidationError(f"{CONFIG_FILE} must hold a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterValidationError(f"peft_type must be 'LORA', got {config.get('peft_type')!r}")
    _check_rank("r", config.get("r"), limits)
    alpha = config.get("lora_alpha")
    if not _is_number(alpha) or alpha <= 0:
        raise AdapterValidationError(f"lora_alpha must be a positive number, got {alpha!r}")
    if config.get("bias") not in (None, "none"):
        raise AdapterValidationError(f"bias={config['bias']!r} is not supported (plain LoRA only)")
    for field in UNSUPPORTED:
        if config.get(field):
            raise AdapterValidationError(
                f"{field}={config[field]!r} is not supported (plain LoRA only)"
            )
    _check_patterns(config, limits)
    _check_targets(config.get("target_modules"))
    if config.get("exclude_modules"):
        _check_targets(config["exclude_modules"], "exclude_modules")
    _check_base(config.get("base_model_name_or_path"), served_model, limits)
    return config


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise AdapterValidationError(f"{path.name} is larger than {limit} bytes")
    return data


@dataclass(frozen=True)
class CheckedFolder:
    """An adapter folder that passed every rule: its parsed config and its weights, read once."""

    config: dict
    weights: WeightsFile


def check_folder(
    folder: Path, limits: Limits, served_model: str, module_shapes: dict[str, tuple[int, int]]
) -> CheckedFolder:
    """Check an adapter folder: both files present, no pickles or code, config and weights valid.

    Other files (README.md ...) are ignored. Returns the config and the weights that were checked,
    so the caller builds the adapter from them (``build_adapter``) instead of reading it again.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterValidationError(f"{folder.name!r} is not an adapter folder")
    for entry in folder.iterdir():
        if entry.suffix.lower() in FORBIDDEN_SUFFIXES:
            raise AdapterValidationError(
                f"{entry.name!r}: only safetensors weights are accepted; pickled checkpoints "
                "are never loaded and code is never run"
            )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise AdapterValidationError(f"{required} is missing")
    config = parse_config(
        _read_limited(folder / CONFIG_FILE, limits.max_config_bytes), limits, served_model
    )
    weights = check_safetensors(folder / WEIGHTS_FILE, config, module_shapes, limits)
    return CheckedFolder(config, weights)
