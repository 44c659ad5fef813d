"""``loraplex serve [options]``: command line -> one frozen :class:`Config` -> uvicorn.

One module per config section (``model``, ``cache``, ``scheduler``, ``lora``, ``structured``,
``server``) holds
its flags and its arguments -> config mapping side by side, so adding an option touches one
module (and its check in ``config.py``). Defaults come from the config dataclasses, so the two
never disagree. Nothing heavy (torch, transformers, the app) is imported until ``serve`` runs,
so ``--help`` and bad flags answer fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import Sequence

from loraplex.cli import cache, lora, model, scheduler, server, structured
from loraplex.cli.server import KEYS_FILE_ENV
from loraplex.config import Config, ServerConfig

__all__ = ["KEYS_FILE_ENV", "build_config", "build_parser", "main", "serve"]
log = logging.getLogger("loraplex")
SECTIONS = (model, cache, scheduler, lora, structured, server)


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
    for section in SECTIONS:  # one help group each, in this order
        section.add_options(serve)
    return parser


def build_config(args: argparse.Namespace) -> Config:
    """The frozen config for parsed ``serve`` arguments; raises ``ValueError`` for bad values."""
    return Config(
        model=model.to_config(args),
        cache=cache.to_config(args),
        scheduler=scheduler.to_config(args),
        lora=lora.to_config(args),
        server=server.to_config(args),
        structured=structured.to_config(args),
    )


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


def _log_step_limits(config: Config) -> None:
    """Say at start what one step may hold (the defaults depend on the device)."""
    log.info(
        "step limits on %s: --max-num-seqs %d, --max-num-batched-tokens %d",
        config.model.device,
        config.scheduler.max_num_seqs,
        config.scheduler.max_num_batched_tokens,
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
        model.check_quantization(config.model)  # the weight format, before the server starts
    except ValueError as exc:
        args.parser.error(str(exc))  # usage + message on stderr, exit status 2
    serve(config)
