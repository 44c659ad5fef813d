"""Constrained decoding and tool calling (``--structured-outputs-*``, ``--tool-call-parser``)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.config.checks import require

# Tool-call parsers of --tool-call-parser (api/tools/parsers.py), vLLM's names.
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")


@dataclass(frozen=True)
class StructuredConfig:
    """Constrained decoding (``engine/constraints``) and tool calling (``api/tools``).

    Grammars compile on ``compile_threads`` workers, never on the engine thread; one that is
    not compiled ``compile_timeout_s`` after it was submitted, or whose text is over
    ``max_grammar_bytes`` (or a JSON schema nested deeper than ``max_schema_depth``), is
    refused with a 400. ``cache_size`` compiled grammars are kept (keyed by their text).
    ``max_whitespace``: whitespace characters a JSON constraint allows between tokens (0: one
    line, ``json.dumps``' default spacing; -1: unbounded, which lets a model loop on blanks).
    ``enable_auto_tool_choice`` with ``tool_call_parser``: ``tool_choice: "auto"`` parses the
    model's own tool-call syntax (vLLM's flags); without them "auto" is a 400, as in vLLM.
    """

    compile_threads: int = 2
    compile_timeout_s: float = 10.0
    max_grammar_bytes: int = 65536
    max_schema_depth: int = 32
    cache_size: int = 256
    max_whitespace: int = 0
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None

    def __post_init__(self) -> None:
        require(self.compile_threads > 0, "--structured-outputs-threads must be positive")
        require(self.compile_timeout_s > 0, "--structured-outputs-timeout must be positive")
        require(self.max_grammar_bytes > 0, "--structured-outputs-max-bytes must be positive")
        require(self.max_schema_depth > 0, "--structured-outputs-max-depth must be positive")
        require(self.cache_size >= 0, "--structured-outputs-cache-size must be >= 0")
        require(self.max_whitespace >= -1, "--structured-outputs-max-whitespace must be >= -1")
        require(
            self.tool_call_parser is None or self.tool_call_parser in TOOL_CALL_PARSERS,
            f"--tool-call-parser must be one of {', '.join(TOOL_CALL_PARSERS)}",
        )
        require(
            not self.enable_auto_tool_choice or self.tool_call_parser is not None,
            "--enable-auto-tool-choice needs --tool-call-parser",
        )
