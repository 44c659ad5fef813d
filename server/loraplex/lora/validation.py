"""Rules for adapters that arrive from outside (uploads, stores): names, config, weights file.

An uploaded adapter is untrusted input, so every rule refuses with :class:`AdapterValidationError`
and a message naming the problem before any tensor reaches the engine:

- names are plain identifiers, so no path can ever be formed from one;
- the config is strict JSON describing a plain LoRA that this server applies exactly;
- the safetensors header is read first (size, tensor count, dtypes, offsets, shapes against the
  base model), so a hostile file costs a few small reads; only then are tensors loaded and
  checked for NaN/Inf;
- pickled checkpoints (``.bin``, ``.pt`` ...) and code are never opened: loading them runs code.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from loraplex.lora.adapter import _KEY, CONFIG_FILE, WEIGHTS_FILE, _pattern_value
from loraplex.lora.errors import AdapterValidationError

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
MiB = 1 << 20
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
    "Limits",
    "check_safetensors",
    "parse_config",
    "strict_json",
    "validate_folder",
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


DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _read_header(path: Path, limits: Limits) -> tuple[dict, int]:
    """The safetensors JSON header (without ``__metadata__``) and the data buffer's length.

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the tensor bytes.
    """
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise AdapterValidationError(
            f"{path.name} is {size} bytes; the limit is {limits.max_file_bytes}"
        )
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise AdapterValidationError(f"{path.name} is too short to be safetensors")
        n = int.from_bytes(prefix, "little")
        if n > limits.max_header_bytes:
            raise AdapterValidationError(
                f"{path.name}: header of {n} bytes exceeds the limit of {limits.max_header_bytes}"
            )
        if 8 + n > size:
            raise AdapterValidationError(f"{path.name}: header length {n} runs past the file end")
        header = strict_json(f.read(n), f"{path.name} header")
    if not isinstance(header, dict):
        raise AdapterValidationError(f"{path.name}: the header must be a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterValidationError(f"{path.name}: __metadata__ must map strings to strings")
    return header, size - 8 - n


def _is_int_list(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _check_entry(key: str, entry: object, data_len: int) -> tuple[list[int], int, int]:
    """One tensor's dtype, shape and byte span; returns (shape, begin, end)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise AdapterValidationError(f"tensor {key!r}: malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise AdapterValidationError(
            f"tensor {key!r} has dtype {dtype!r}; only {', '.join(DTYPE_BYTES)} are accepted"
        )
    if not _is_int_list(shape) or not _is_int_list(offsets, 2):
        raise AdapterValidationError(f"tensor {key!r}: shape and data_offsets must be integers")
    begin, end = offsets
    if not begin <= end <= data_len:
        raise AdapterValidationError(
            f"tensor {key!r}: data_offsets {offsets} lie outside the {data_len}-byte data buffer"
        )
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise AdapterValidationError(
            f"tensor {key!r}: {end - begin} bytes do not hold {dtype} of shape {shape}"
        )
    return shape, begin, end


def _matches(module: str, targets: str | list[str]) -> bool:
    """PEFT's rule: a list entry equals the module name or its last dotted components; a string
    is a regex over the full name ("all-linear" targets every projection)."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _is_targeted(module: str, config: dict) -> bool:
    excluded = config.get("exclude_modules")
    return _matches(module, config["target_modules"]) and not (
        excluded and _matches(module, excluded)
    )


def check_safetensors(
    path: Path, config: dict, module_shapes: dict[str, tuple[int, int]], limits: Limits
) -> None:
    """Check ``adapter_model.safetensors`` against the config and the base model.

    ``config`` comes from :func:`parse_config`; ``module_shapes`` maps each base projection to
    ``(in_features, out_features)``. The header is
    checked before any tensor is read: limits, dtypes, offsets (contiguous, inside the file),
    keys ``<module>.lora_A/B.weight`` for targeted projections, ``A: [r_m, in]``,
    ``B: [out, r_m]`` with ``r_m`` from ``rank_pattern`` or ``r``. Then values must be finite.
    """
    header, data_len = _read_header(path, limits)
    if len(header) > limits.max_tensors:
        raise AdapterValidationError(
            f"{path.name} holds {len(header)} tensors; the limit is {limits.max_tensors}"
        )
    spans: list[tuple[int, int, str]] = []
    found: dict[str, dict[str, list[int]]] = {}
    for key, entry in header.items():
        shape, begin, end = _check_entry(key, entry, data_len)
        spans.append((begin, end, key))
        match = _KEY.match(key)
        if match is None:
            raise AdapterValidationError(
                f"unexpected tensor {key!r}: only <module>.lora_A.weight / lora_B.weight"
            )
        module, ab = match["module"], match["ab"]
        if module not in module_shapes:
            raise AdapterValidationError(
                f"tensor {key!r}: {module!r} is not a projection of the base model"
            )
        if not _is_targeted(module, config):
            raise AdapterValidationError(
                f"tensor {key!r}: {module!r} is not in target_modules (or is in exclude_modules)"
            )
        if ab in found.setdefault(module, {}):
            raise AdapterValidationError(f"tensor {key!r}: lora_{ab} of {module!r} appears twice")
        found[module][ab] = shape
    position = 0  # the spec: tensors tile the data buffer, no gaps or overlaps
    for begin, end, key in sorted(spans):
        if begin != position:
            raise AdapterValidationError(f"tensor {key!r} overlaps another or leaves a gap")
        position = end
    if position != data_len:
        raise AdapterValidationError(f"{path.name}: {data_len - position} trailing data bytes")
    if not found:
        raise AdapterValidationError(f"{path.name} holds no LoRA weights")
    for module, ab in sorted(found.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterValidationError(f"module {module!r} needs both lora_A and lora_B")
        rank = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
        fan_in, fan_out = module_shapes[module]
        for side, expected in (("A", [rank, fan_in]), ("B", [fan_out, rank])):
            if ab[side] != expected:
                raise AdapterValidationError(
                    f"module {module!r}: lora_{side} has shape {ab[side]}, expected {expected} "
                    f"(rank {rank}, in={fan_in}, out={fan_out})"
                )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise AdapterValidationError(f"{path.name} cannot be read: {exc}") from exc
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterValidationError(f"tensor {key!r} holds NaN or infinite values")


def _read_limited(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise AdapterValidationError(f"{path.name} is larger than {limit} bytes")
    return data


def validate_folder(
    folder: Path, limits: Limits, served_model: str, module_shapes: dict[str, tuple[int, int]]
) -> dict:
    """Check an adapter folder: both files present, no pickles or code, config and weights valid.

    Other files (README.md ...) are ignored. Returns the parsed config.
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
    check_safetensors(folder / WEIGHTS_FILE, config, module_shapes, limits)
    return config
