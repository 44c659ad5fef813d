"""Loads a model folder's weights straight onto the serving device.

Loaded on the host and then moved (``from_pretrained(...).to(device)``), a model passes through
host memory whole: its full size in host RAM and a second copy pass. With a ``device_map``
transformers instead reads each tensor from the (memory-mapped) safetensors file and puts it on
the device at once, in the requested dtype. transformers needs ``accelerate`` for a
``device_map`` (or a ``torch.device`` context); without it the model is loaded on the host and
moved, as before, with a warning. On the CPU nothing changes: the host is the device.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

log = logging.getLogger(__name__)


def accelerate_installed() -> bool:
    """Whether transformers can take a ``device_map`` here (it needs ``accelerate``)."""
    return importlib.util.find_spec("accelerate") is not None


def weights_device_map(device: torch.device, accelerate: bool) -> dict[str, torch.device] | None:
    """The ``device_map`` that puts every weight on ``device`` as it is read (``{"": device}``),
    or None where the model is loaded on the host: on the CPU, and without ``accelerate``."""
    if device.type == "cpu":
        return None
    if not accelerate:
        log.warning(
            "accelerate is not installed: the weights load on the host, then move to %s "
            "(the model's size in host memory, two copies); pip install accelerate",
            device,
        )
        return None
    return {"": device}


def load_pretrained(
    path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str
) -> PreTrainedModel:
    """``path``'s causal LM in ``dtype`` on ``device``, straight from the file where it can be."""
    device_map = weights_device_map(device, accelerate_installed())
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn_implementation, device_map=device_map
    )
    return model if device_map is not None else model.to(device)
