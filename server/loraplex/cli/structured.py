"""The ``structured outputs and tools`` options of ``loraplex serve``: the caps of grammar
compilation (``engine/constraints``) and vLLM's tool-call flags (``api/tools``)."""

from __future__ import annotations

import argparse

from loraplex.config import TOOL_CALL_PARSERS, StructuredConfig


def add_options(serve: argparse.ArgumentParser) -> None:
    """Compile workers, caps, JSON whitespace, and automatic tool choice."""
    group = serve.add_argument_group("structured outputs and tools")
    group.add_argument(
        "--structured-outputs-threads",
        type=int,
        default=StructuredConfig.compile_threads,
        metavar="N",
        help="worker threads compiling JSON schemas, regexes and grammars (never the engine's)",
    )
    group.add_argument(
        "--structured-outputs-timeout",
        type=float,
        default=StructuredConfig.compile_timeout_s,
        metavar="SECONDS",
        help="a constraint not compiled this long after it was submitted is refused (400), "
        "and stays refused",
    )
    group.add_argument(
        "--structured-outputs-max-bytes",
        type=int,
        default=StructuredConfig.max_grammar_bytes,
        metavar="BYTES",
        help="largest schema, regex, choice list or grammar text (400 past it)",
    )
    group.add_argument(
        "--structured-outputs-max-depth",
        type=int,
        default=StructuredConfig.max_schema_depth,
        metavar="N",
        help="deepest nesting of a JSON schema's objects and arrays (400 past it)",
    )
    group.add_argument(
        "--structured-outputs-cache-size",
        type=int,
        default=StructuredConfig.cache_size,
        metavar="N",
        help="compiled grammars kept, keyed by their text (least recently used go first)",
    )
    group.add_argument(
        "--structured-outputs-max-whitespace",
        type=int,
        default=StructuredConfig.max_whitespace,
        metavar="N",
        help="whitespace characters JSON output may put between tokens: 0 writes one line "
        "(json.dumps' spacing), -1 is unbounded (a model may then loop on blank lines)",
    )
    group.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='tool_choice "auto": read tool calls from the model\'s own syntax (needs '
        "--tool-call-parser); without it, auto is a 400, as in vLLM",
    )
    group.add_argument(
        "--tool-call-parser",
        choices=TOOL_CALL_PARSERS,
        default=None,
        help="the model's tool-call syntax: hermes (Qwen 2.5/3, Hermes), llama3_json "
        "(Llama 3.1+), mistral",
    )


def to_config(args: argparse.Namespace) -> StructuredConfig:
    """The :class:`StructuredConfig` of parsed ``serve`` arguments (validated there)."""
    return StructuredConfig(
        compile_threads=args.structured_outputs_threads,
        compile_timeout_s=args.structured_outputs_timeout,
        max_grammar_bytes=args.structured_outputs_max_bytes,
        max_schema_depth=args.structured_outputs_max_depth,
        cache_size=args.structured_outputs_cache_size,
        max_whitespace=args.structured_outputs_max_whitespace,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
    )
