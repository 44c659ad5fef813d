"""Checks of ``adapter_model.safetensors`` against the adapter config and the base model.

The header is read first (size, tensor count, dtypes, offsets, shapes against the base model), so
a hostile file costs a few small reads; only then is the file read, once, and its tensors checked
for NaN/Inf. Those tensors and their hash are returned, so registering an adapter loads exactly
the bytes that were checked and never reads the file again.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from loraplex.lora.adapter import _KEY, WeightsFile, _pattern_value
from loraplex.lora.errors import AdapterValidationError
from loraplex.lora.limits import Limits, strict_json

__all__ = ["DTYPE_BYTES", "check_safetensors"]

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _read_header(path: Path, limits: Limits) -> tuple[dict, int, bytes]:
    """The safetensors JSON header (without ``__metadata__``), the data buffer's length and the
    file's first ``8 + N`` bytes (so the later full read can be matched against them).

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
        raw = f.read(n)
    header = strict_json(raw, f"{path.name} header")
    if not isinstance(header, dict):
        raise AdapterValidationError(f"{path.name}: the header must be a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise AdapterValidationError(f"{path.name}: __metadata__ must map strings to strings")
    return header, size - 8 - n, prefix + raw


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


def _read_weights(path: Path, head: bytes, size: int) -> WeightsFile:
    """The whole file in one read, after its header passed; it must still begin with the header
    that was checked, so the tensors returned are the ones whose shapes were checked."""
    try:
        with path.open("rb") as f:
            data = f.read(size + 1)
        if len(data) != size or not data.startswith(head):
            raise AdapterValidationError(f"{path.name} changed while it was being checked")
        return WeightsFile.parse(data)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise AdapterValidationError(f"{path.name} cannot be read: {exc}") from exc


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
) -> WeightsFile:
    """Check ``adapter_model.safetensors`` against the config and the base model.

    ``config`` comes from :func:`parse_config`; ``module_shapes`` maps each base projection to
    ``(in_features, out_features)``. The header is
    checked before any tensor is read: limits, dtypes, offsets (contiguous, inside the file),
    keys ``<module>.lora_A/B.weight`` for targeted projections, ``A: [r_m, in]``,
    ``B: [out, r_m]`` with ``r_m`` from ``rank_pattern`` or ``r``. Then values must be finite.
    Returns the weights read (tensors and sha256), for the caller to load without reading again.
    """
    header, data_len, head = _read_header(path, limits)
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
    weights = _read_weights(path, head, len(head) + data_len)
    for key, tensor in weights.tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterValidationError(f"tensor {key!r} holds NaN or infinite values")
    return weights
