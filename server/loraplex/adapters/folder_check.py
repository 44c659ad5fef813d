"""An adapter folder from outside (an upload, a start-up folder, the store) checked as a whole.

An adapter folder is untrusted input, so every rule refuses with :class:`AdapterValidationError`
and a message naming the problem before any tensor reaches the engine:

- pickled checkpoints (``.bin``, ``.pt`` ...) and code are never opened: loading them runs code;
- the config is strict JSON describing a plain LoRA this server applies exactly
  (``peft_config.py``);
- the safetensors header is read first (size, tensor count, dtypes, offsets, shapes against the
  base model), so a hostile file costs a few small reads; only then is the file read, once, and
  checked for NaN/Inf (``safetensors_check.py``). Those tensors are returned for loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits, refuse_pickles
from loraplex.adapters.safetensors_check import WeightsFile, check_safetensors

__all__ = ["CheckedFolder", "check_folder"]


@dataclass(frozen=True)
class CheckedFolder:
    """An adapter folder that passed every rule: its parsed config and its weights, read once."""

    config: PeftConfig
    weights: WeightsFile


def check_folder(
    folder: Path,
    limits: Limits,
    served_model: str,
    module_shapes: Mapping[str, tuple[int, int]],
) -> CheckedFolder:
    """Check an adapter folder: both files present, no pickles or code, config and weights valid.

    ``module_shapes`` maps each base projection to ``(in_features, out_features)``;
    ``served_model`` empty: the config's base model is not compared. Other files (README.md ...)
    are ignored. Returns the config and the weights that were checked, so the caller builds the
    adapter from them (``weights.build_adapter``) instead of reading it again.
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
    weights = check_safetensors(folder / WEIGHTS_FILE, config, module_shapes, limits)
    return CheckedFolder(config, weights)
