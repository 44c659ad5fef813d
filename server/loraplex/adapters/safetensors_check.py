"""Checks of ``adapter_model.safetensors`` against the adapter config and the base model.

The header is read first (size, tensor count, dtypes, offsets, shapes against the base model), so
a hostile file costs a few small reads; only then is the file read, once, and its tensors checked
for NaN/Inf. Those tensors and their hash are returned, so registering an adapter loads exactly
the bytes that were checked and never reads the file again.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.param_targets import Shape, expected_shapes, is_parameter, parameter_keys
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import MAX_LORA_VALUE, Limits, strict_json

__all__ = [
    "DTYPE_BYTES",
    "VALUE_CHECKS",
    "WeightsFile",
    "check_header",
    "check_safetensors",
    "split_key",
]

# The checks of tensor values (below the header): today, every value finite. The store records
# this with an adapter's hash when it passed them; bump it when those checks change, so start-up
# stops trusting records written under the old ones (folder_check.check_folder).
VALUE_CHECKS = 1

DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# PEFT's keys: ``base_model.model.<module>.lora_A.weight`` ([r, in]) and ``...lora_B.weight``
# ([out, r]), optionally with the adapter's name before ``.weight``.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


def split_key(key: str) -> tuple[str, str]:
    """``(module, "A" or "B")`` of a PEFT LoRA tensor key; any other key is refused."""
    match = _KEY.match(key)
    if match is None:
        raise AdapterValidationError(
            f"unexpected tensor {key!r}: only <module>.lora_A.weight / lora_B.weight"
        )
    return match["module"], match["ab"]


@dataclass(frozen=True)
class WeightsFile:
    """``adapter_model.safetensors`` read once: its sha256 (the version) and its tensors.

    Hash and tensors come from the same bytes, so the version names exactly the weights served
    and a file cannot change between being checked, hashed and loaded. ``parameters`` maps a
    PEFT module name of the file that adapts a parameter (``param_targets.py``) to
    ``(parameter path, E)``; every other module name is a projection's own name.
    """

    version: str
    tensors: dict[str, torch.Tensor]
    parameters: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes) -> WeightsFile:
        return cls(hashlib.sha256(data).hexdigest(), load(data))


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


def _check_shapes(
    found: dict[str, dict[str, list[int]]],
    config: PeftConfig,
    module_shapes: Mapping[str, Shape],
) -> None:
    """The one shape rule: each module has ``A: [r_m, in]`` and ``B: [out, r_m]`` (a parameter
    of E experts: ``[r_m·E, in]`` and ``[out, r_m·E]``), with ``r_m`` from the config and the
    rest from the base model."""
    for module, ab in sorted(found.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterValidationError(f"module {module!r} needs both lora_A and lora_B")
        rank = config.rank_of(module)
        shape = module_shapes[module]
        for side, expected in zip("AB", expected_shapes(shape, rank), strict=True):
            if ab[side] != expected:
                raise AdapterValidationError(
                    f"module {module!r}: lora_{side} has shape {ab[side]}, expected {expected} "
                    f"(rank {rank}, base shape {list(shape)})"
                )


def _target(
    key: str, module: str, params: Mapping[str, str], config: PeftConfig, shapes: Mapping
) -> str:
    """The base-model target a file's module name adapts, checked to be one PEFT targets."""
    if module in params:  # named by target_parameters and offered by the model
        return params[module]
    if module not in shapes or is_parameter(shapes[module]):
        raise AdapterValidationError(
            f"tensor {key!r}: {module!r} is not a projection of the base model, nor a MoE "
            "expert tensor or router named by target_parameters (the only parameters this "
            "server applies LoRA to)"
        )
    # A Linear's weight named by target_parameters is plain LoRA on that projection.
    if not (config.targets(module) or config.targets_parameter(module + ".weight")):
        raise AdapterValidationError(
            f"tensor {key!r}: {module!r} is not in target_modules (or is in exclude_modules)"
        )
    return module


def check_header(
    path: Path, config: PeftConfig, module_shapes: Mapping[str, Shape], limits: Limits
) -> tuple[bytes, int, dict[str, tuple[str, int]]]:
    """Every check of ``adapter_model.safetensors`` that its header answers, reading only the
    header: limits, dtypes, offsets (contiguous, inside the file), keys
    ``<module>.lora_A/B.weight`` for targeted projections and parameters, ``A: [r_m, in]``,
    ``B: [out, r_m]`` (``[r_m·E, in]`` / ``[out, r_m·E]`` for a parameter of E experts) with
    ``r_m`` from ``rank_pattern`` or ``r`` and the rest from ``module_shapes`` (a projection ->
    ``(in_features, out_features)``, a parameter -> ``(E, in, out)``: ``param_targets.py``).
    Returns the file's first bytes (its length prefix and header), its total size, and which of
    its module names adapt parameters (``WeightsFile.parameters``), for
    :func:`check_safetensors`."""
    header, data_len, head = _read_header(path, limits)
    if len(header) > limits.max_tensors:
        raise AdapterValidationError(
            f"{path.name} holds {len(header)} tensors; the limit is {limits.max_tensors}"
        )
    spans: list[tuple[int, int, str]] = []
    found: dict[str, dict[str, list[int]]] = {}
    params = parameter_keys(config, module_shapes)
    for key, entry in header.items():
        shape, begin, end = _check_entry(key, entry, data_len)
        spans.append((begin, end, key))
        module, ab = split_key(key)
        target = _target(key, module, params, config, module_shapes)
        if ab in found.setdefault(target, {}):
            raise AdapterValidationError(f"tensor {key!r}: lora_{ab} of {target!r} appears twice")
        found[target][ab] = shape
    position = 0  # the spec: tensors tile the data buffer, no gaps or overlaps
    for begin, end, key in sorted(spans):
        if begin != position:
            raise AdapterValidationError(f"tensor {key!r} overlaps another or leaves a gap")
        position = end
    if position != data_len:
        raise AdapterValidationError(f"{path.name}: {data_len - position} trailing data bytes")
    if not found:
        raise AdapterValidationError(f"{path.name} holds no LoRA weights")
    _check_shapes(found, config, module_shapes)
    used = {split_key(key)[0] for key in header} & set(params)
    parameters = {m: (params[m], module_shapes[params[m]][0]) for m in sorted(used)}
    return head, len(head) + data_len, parameters


def check_safetensors(
    path: Path, config: PeftConfig, module_shapes: Mapping[str, Shape], limits: Limits
) -> WeightsFile:
    """Check ``adapter_model.safetensors`` against the config and the base model: its header
    first (:func:`check_header`), before any tensor is read; then the whole file is read once
    and its values must be finite (:data:`VALUE_CHECKS`). Returns the weights read (tensors and
    sha256), for the caller to load without reading again."""
    head, size, parameters = check_header(path, config, module_shapes, limits)
    weights = _read_weights(path, head, size)
    for key, tensor in weights.tensors.items():
        module, ab = split_key(key)
        target = parameters[module][0] if module in parameters else module
        check_values(key, tensor, config.scale_of(target) if ab == "B" else 1.0)
    return replace(weights, parameters=parameters)


def check_values(what: str, tensor: torch.Tensor, scale: float) -> None:
    """Finite values, and ``scale * |value|`` within MAX_LORA_VALUE (``scale`` is 1 for an
    ``A``, the module's alpha/r for a ``B``: the slot tables hold ``scale * B``)."""
    if not torch.isfinite(tensor).all():
        raise AdapterValidationError(f"tensor {what!r} holds NaN or infinite values")
    largest = scale * float(tensor.abs().max()) if tensor.numel() else 0.0
    if largest > MAX_LORA_VALUE:
        raise AdapterValidationError(
            f"tensor {what!r}: scale x |value| reaches {largest:.3g}, above {MAX_LORA_VALUE:g} "
            "(slot tables hold scale x B and may be float16)"
        )
