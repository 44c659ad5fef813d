"""PEFT LoRA adapters on disk -> per-module ``(A, B, scale)`` in host memory.

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys
look like ``base_model.model.<module>.lora_A.weight`` ([r, in]) and ``...lora_B.weight``
([out, r]). The update of module m is ``scale_m · B_m · A_m`` with
``scale_m = alpha_m / r_m`` (or ``alpha_m / sqrt(r_m)`` with ``use_rslora``), where ``r_m`` and
``alpha_m`` come from ``rank_pattern`` / ``alpha_pattern`` when a pattern matches ``m``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load

from loraplex.lora.card import adapter_key
from loraplex.lora.errors import AdapterValidationError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


@dataclass(frozen=True)
class LoRAWeights:
    """One module's update: ``delta = scale · B @ A``; a [r, in], b [out, r].

    ``b`` is kept column-major (its memory is Bᵀ's rows, the slot tables' layout), so that
    loading a slot copies contiguous memory instead of transposing.
    """

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "b", self.b.T.contiguous().T)

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoRAAdapter:
    """A loaded adapter: name, content hash (sha256 of the weights file) and per-module weights."""

    name: str
    version: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    modules: dict[str, LoRAWeights]
    base_model: str | None = None

    @property
    def key(self) -> str:
        if self.name.startswith("+mix-"):  # a combination is identified by its parts already
            return self.name
        return adapter_key(self.name, self.version)

    @property
    def max_rank(self) -> int:
        return max(w.rank for w in self.modules.values())


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """PEFT's rule: a pattern key matches a module name that equals it or ends with ``.key``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AdapterValidationError(f"{CONFIG_FILE} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterValidationError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterValidationError(f"{CONFIG_FILE} must hold a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterValidationError(f"peft_type must be LORA, got {config.get('peft_type')!r}")
    return config


@dataclass(frozen=True)
class WeightsFile:
    """``adapter_model.safetensors`` read once: its sha256 (the version) and its tensors.

    Hash and tensors come from the same bytes, so the version names exactly the weights served
    and a file cannot change between being checked, hashed and loaded.
    """

    version: str
    tensors: dict[str, torch.Tensor]

    @classmethod
    def parse(cls, data: bytes) -> WeightsFile:
        return cls(hashlib.sha256(data).hexdigest(), load(data))


def load_adapter(name: str, folder: str | Path, dtype: torch.dtype = torch.float32) -> LoRAAdapter:
    """Read a PEFT adapter folder into host memory (one read of the weights file)."""
    folder = Path(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterValidationError(f"{WEIGHTS_FILE} is missing (only safetensors are accepted)")
    return build_adapter(name, config, WeightsFile.parse(weights_path.read_bytes()), dtype)


def build_adapter(
    name: str, config: dict, weights: WeightsFile, dtype: torch.dtype = torch.float32
) -> LoRAAdapter:
    """Pair ``weights`` into per-module ``(A, B, scale)``; registration passes the weights its
    checks already read, so the file is not read again."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterValidationError(f"unexpected tensor {key!r}: only lora_A/lora_B weights")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    r = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", r))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    modules: dict[str, LoRAWeights] = {}
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterValidationError(f"module {module!r} needs both lora_A and lora_B")
        a, b = ab["A"], ab["B"]
        rank = int(_pattern_value(rank_pattern, module, r))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterValidationError(
                f"module {module!r}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                f"do not match rank {rank}"
            )
        module_alpha = _pattern_value(alpha_pattern, module, alpha)
        denom = math.sqrt(rank) if config.get("use_rslora") else rank
        modules[module] = LoRAWeights(a.to(dtype), b.to(dtype), module_alpha / denom)
    if not modules:
        raise AdapterValidationError("the adapter has no LoRA weights")
    targets = config.get("target_modules") or []
    return LoRAAdapter(
        name=name,
        version=weights.version,
        rank=r,
        alpha=alpha,
        target_modules=tuple([targets] if isinstance(targets, str) else targets),
        modules=modules,
        base_model=config.get("base_model_name_or_path"),
    )
