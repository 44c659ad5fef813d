"""An adapter folder from outside (an upload, a start-up folder, the store) checked as a whole.

An adapter folder is untrusted input, so every rule refuses with :class:`AdapterValidationError`
and a message naming the problem before any tensor reaches the engine:

- pickled checkpoints (``.bin``, ``.pt`` ...) and code are never opened: loading them runs code;
- the config is strict JSON describing a plain LoRA this server applies exactly
  (``peft_config.py``);
- the safetensors header is read first (size, tensor count, dtypes, offsets, shapes against the
  base model), so a hostile file costs a few small reads; only then is the file read, once, and
  checked for NaN/Inf (``safetensors_check.py``). Those tensors are returned for loading;
- at start-up, a stored adapter the store vouches is unchanged since its values were checked is
  checked by config and header only (``trusted_version``): reading and hashing every stored
  byte again made start-up scale with the store's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.param_targets import Shape
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits, refuse_pickles
from loraplex.adapters.safetensors_check import (
    VALUE_CHECKS,
    WeightsFile,
    check_header,
    check_safetensors,
)

__all__ = ["VALUE_CHECKS", "CheckedFolder", "check_folder"]


@dataclass(frozen=True)
class CheckedFolder:
    """An adapter folder that passed every rule: its parsed config, the sha256 of its weights
    file (``version``) and the weights, read once; ``weights`` is None when they were not read
    (``trusted_version``: start-up over an unchanged store, see :func:`check_folder`)."""

    config: PeftConfig
    version: str
    weights: WeightsFile | None


def check_folder(
    folder: Path,
    limits: Limits,
    served_model: str,
    module_shapes: Mapping[str, Shape],
    trusted_version: str | None = None,
) -> CheckedFolder:
    """Check an adapter folder: both files present, no pickles or code, config and weights valid.

    ``module_shapes`` maps each base projection to ``(in_features, out_features)`` and each
    parameter LoRA may adapt to ``(experts, in, out)`` (``param_targets.py``);
    ``served_model`` empty: the config's base model is not compared. Other files (README.md ...)
    are ignored. Returns the config and the weights that were checked, so the caller builds the
    adapter from them (``weights.build_adapter``) instead of reading it again.

    ``trusted_version``: the sha256 of weights whose values passed :data:`VALUE_CHECKS` before
    and that the store vouches are unchanged since (start-up): every rule the config and the
    safetensors header answer still runs, since those depend on the options and the model
    (``--max-lora-rank``, the base model's projections); the tensors are not read or hashed.
    Each later load into host memory checks everything again.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterValidationError(f"{folder.name!r} is not an adapter folder")
    for entry in folder.iterdir():
        refuse_pickles(repr(entry.name), entry.name)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / required).is_file():
            raise AdapterValidationError(f"{required} is missing")
    config = PeftConfig.read(folder / CONFIG_FILE, limits, served_model)
    if trusted_version is not None:
        check_header(folder / WEIGHTS_FILE, config, module_shapes, limits)
        return CheckedFolder(config, trusted_version, None)
    weights = check_safetensors(folder / WEIGHTS_FILE, config, module_shapes, limits)
    return CheckedFolder(config, weights.version, weights)
