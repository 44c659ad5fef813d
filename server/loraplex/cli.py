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
from loraplex.cli_options import KEYS_FILE_ENV, build_parser
from loraplex.config import (
    CacheConfig,
    Config,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
    batch_defaults,
)
from loraplex.engine.quantization import resolve_quantization

log = logging.getLogger("loraplex")


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


def _step_limits(args: argparse.Namespace) -> tuple[int, int]:
    """``--max-num-seqs`` and ``--max-num-batched-tokens``, each the device's default when not
    given (None), so ``--device cuda`` alone gets a GPU's batch sizes."""
    seqs, tokens = batch_defaults(args.device)
    return (
        seqs if args.max_num_seqs is None else args.max_num_seqs,
        tokens if args.max_num_batched_tokens is None else args.max_num_batched_tokens,
    )


def _log_step_limits(config: Config) -> None:
    """Say at start what one step may hold (the defaults depend on the device)."""
    log.info(
        "step limits on %s: --max-num-seqs %d, --max-num-batched-tokens %d",
        config.model.device,
        config.scheduler.max_num_seqs,
        config.scheduler.max_num_batched_tokens,
    )


def build_config(args: argparse.Namespace) -> Config:
    """The frozen config for parsed ``serve`` arguments; raises ``ValueError`` for bad values."""
    max_num_seqs, max_num_batched_tokens = _step_limits(args)
    return Config(
        model=ModelConfig(
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
        ),
        cache=CacheConfig(
            block_size=args.block_size,
            kv_cache_memory_mb=args.kv_cache_memory_mb,
            num_blocks=args.num_blocks,
            enable_prefix_caching=args.enable_prefix_caching,
            gpu_memory_utilization=args.gpu_memory_utilization,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_seqs_per_request=args.max_seqs_per_request,
            max_queued_requests=args.max_queued_requests,
            max_queued_requests_per_tenant=args.max_queued_requests_per_tenant,
            adapter_affinity=args.adapter_affinity,
            adapter_affinity_max_skips=args.adapter_affinity_max_skips,
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
            max_chat_messages=args.max_chat_messages,
            tokenizer_threads=args.tokenizer_threads,
            shutdown_timeout=args.shutdown_timeout,
            ui=args.ui,
        ),
    )


def serve(config: Config) -> None:
    """Run the HTTP server until SIGTERM/SIGINT, which drain it first (api/lifecycle.py)."""
    # Here, not at the top: --help must not import torch.
    from loraplex.api.app import create_app
    from loraplex.api.http_protocol import uvicorn_options
    from loraplex.api.lifecycle import serve_until_signalled

    level = config.server.log_level
    # uvicorn configures only its own loggers; ours follow the same level ("trace" is uvicorn's).
    logging.basicConfig(
        level=logging.DEBUG if level == "trace" else level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _log_access(config.server)
    _log_step_limits(config)
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
        # The weight format is checked before the server starts (libraries, device, folder).
        model = config.model
        folder = None if model.load_format == "dummy" else model.model
        resolve_quantization(model.quantization, folder, model.device.partition(":")[0])
    except ValueError as exc:
        args.parser.error(str(exc))  # usage + message on stderr, exit status 2
    serve(config)


if __name__ == "__main__":
    main()
