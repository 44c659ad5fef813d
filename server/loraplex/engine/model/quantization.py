"""Which weight format the base model is served in, and whether this machine can run it.

Two ways in, vLLM's:

- ``--quantization bitsandbytes`` (NF4, 4-bit: QLoRA's format) or ``bitsandbytes-8bit``
  (LLM.int8) quantizes a float checkpoint as it loads, each tensor as it is read, and computes
  in ``--dtype``;
- a folder saved quantized carries ``quantization_config`` in its ``config.json``: its format is
  detected with no flag (a flag naming another format is refused). bitsandbytes folders run on
  the CPU and CUDA; GPTQ, AWQ, compressed-tensors and FP8 kernels need a CUDA device.

Every refusal is a :class:`QuantizationError` (a ``ValueError``) raised before any weight is
read, naming the format and what to install or change: the server does not start.
No torch here: the CLI checks before anything heavy is imported.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from loraplex.config import QUANTIZATIONS

QUANT_EXTRA = "pip install 'loraplex[quant]'"
BNB_PACKAGES = ("bitsandbytes", "accelerate")  # transformers' bitsandbytes loader needs both
# quant_method in config.json -> the packages transformers' loader for it imports. All of these
# kernels need a CUDA device.
GPU_FORMATS: dict[str, tuple[str, ...]] = {
    "gptq": ("optimum", "gptqmodel"),
    "awq": ("gptqmodel", "accelerate"),
    "compressed-tensors": ("compressed_tensors",),
    "fp8": ("accelerate",),
    "fbgemm_fp8": ("fbgemm_gpu",),
}


class QuantizationError(ValueError):
    """A weight format this server or this machine cannot run: a start-up error."""


@dataclass(frozen=True)
class QuantFormat:
    """``method``: one of QUANTIZATIONS or a GPU format's ``quant_method``; ``label``: how the
    projections are stored (``nf4``, ``fp4``, ``int8``, or the method); ``prequantized``: read
    quantized from the folder (else quantized at load)."""

    method: str
    label: str
    prequantized: bool

    @property
    def needs_cuda(self) -> bool:
        return self.method in GPU_FORMATS

    @property
    def name(self) -> str:
        """``bitsandbytes-nf4``, ``bitsandbytes-int8``, ``gptq`` ...: the format in one word."""
        bnb = self.method.startswith("bitsandbytes")
        return f"bitsandbytes-{self.label}" if bnb else self.method

    def describe(self) -> str:
        how = "saved quantized" if self.prequantized else "quantized at load"
        return f"{self.method} {self.label} ({how})"


def checkpoint_quantization(folder: str | Path | None) -> dict | None:
    """The ``quantization_config`` of a model folder's ``config.json`` (None: float weights,
    or no folder)."""
    if folder is None:
        return None
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise QuantizationError(f"{path} cannot be read: {exc}") from exc
    found = config.get("quantization_config") if isinstance(config, dict) else None
    if found is not None and not isinstance(found, dict):
        raise QuantizationError(f"{path}: quantization_config must be an object, got {found!r}")
    return found


def _saved_format(saved: dict, folder: str | Path) -> QuantFormat:
    """The format a folder was saved in, from its ``quantization_config``."""
    method = saved.get("quant_method")
    if method == "bitsandbytes":
        if saved.get("load_in_4bit"):
            return QuantFormat("bitsandbytes", saved.get("bnb_4bit_quant_type", "nf4"), True)
        if saved.get("load_in_8bit"):
            return QuantFormat("bitsandbytes-8bit", "int8", True)
        raise QuantizationError(
            f"{folder}: a bitsandbytes quantization_config with neither load_in_4bit nor "
            "load_in_8bit; the checkpoint is damaged"
        )
    if method in GPU_FORMATS:
        return QuantFormat(method, method, True)
    known = ", ".join(("bitsandbytes", *GPU_FORMATS))
    raise QuantizationError(
        f"{folder} is quantized with {method!r}, which loraplex does not serve (it serves "
        f"{known}); load the float checkpoint instead, with --quantization bitsandbytes to "
        "keep it small"
    )


def resolve_quantization(
    flag: str | None, folder: str | Path | None, device_type: str
) -> QuantFormat | None:
    """The format to serve: the folder's own if it was saved quantized, else ``flag``'s (None:
    float). Refused (QuantizationError): a flag naming another format than the folder's, a
    library that is not installed, a format whose kernels ``device_type`` lacks."""
    if flag is not None and flag not in QUANTIZATIONS:
        raise QuantizationError(f"--quantization must be one of {QUANTIZATIONS}, got {flag!r}")
    saved = checkpoint_quantization(folder)
    if saved is not None:
        found = _saved_format(saved, folder)
        if flag is not None and flag != found.method:
            raise QuantizationError(
                f"--quantization {flag} does not match {folder}, which is saved quantized as "
                f"{found.method} {found.label}: drop the flag to serve it as saved"
            )
    elif flag is not None:
        found = QuantFormat(flag, "nf4" if flag == "bitsandbytes" else "int8", False)
    else:
        return None
    check_runnable(found, device_type)
    return found


def check_runnable(found: QuantFormat, device_type: str) -> None:
    """Raise QuantizationError unless ``found`` can run on a ``device_type`` device here."""
    if found.needs_cuda and device_type != "cuda":
        raise QuantizationError(
            f"{found.describe()}: its kernels need a CUDA device and this server runs on "
            f"{device_type!r}; serve it with --device cuda, or serve the float checkpoint "
            "(with --quantization bitsandbytes to keep it small on the CPU)"
        )
    packages = GPU_FORMATS.get(found.method, BNB_PACKAGES)
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        hint = QUANT_EXTRA if not found.needs_cuda else "pip install " + " ".join(missing)
        raise QuantizationError(
            f"{found.describe()} needs {', '.join(missing)}, which is not installed: {hint}"
        )
