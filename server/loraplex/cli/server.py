"""The ``HTTP server`` options of ``loraplex serve``: the flags and the :class:`ServerConfig`."""

from __future__ import annotations

import argparse
import os

from loraplex.api_keys import ApiKeyEntry, load_api_keys_file
from loraplex.config import ServerConfig

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
KEYS_FILE_ENV = "LORAPLEX_API_KEYS_FILE"  # read in to_config only, never at import


def add_options(serve: argparse.ArgumentParser) -> None:
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
        f"(admin, user, inference, metrics), read at start (default: ${KEYS_FILE_ENV})",
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
        "--metrics-require-key",
        action="store_true",
        help="with API keys: GET /metrics without a key is a 401 instead of the anonymous view "
        "(tenants and their adapters as opaque labels, public adapters by name, which the "
        "Inference Gateway's endpoint picker reads: it cannot send a key)",
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


def to_config(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` of parsed ``serve`` arguments (validated there)."""
    return ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        api_keys=_api_keys(args.api_keys_file),
        log_level=args.log_level,
        metrics_adapter_labels=args.metrics_adapter_labels,
        metrics_require_key=args.metrics_require_key,
        timeout_keep_alive=args.timeout_keep_alive,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        body_min_rate=args.body_min_rate,
        max_request_mb=args.max_request_mb,
        max_chat_messages=args.max_chat_messages,
        tokenizer_threads=args.tokenizer_threads,
        shutdown_timeout=args.shutdown_timeout,
        ui=args.ui,
    )


def _api_keys(path: str | None) -> tuple[ApiKeyEntry, ...]:
    """The keys of ``--api-keys-file`` (or ``$LORAPLEX_API_KEYS_FILE``); none without either."""
    path = path or os.environ.get(KEYS_FILE_ENV) or None
    return load_api_keys_file(path) if path is not None else ()
