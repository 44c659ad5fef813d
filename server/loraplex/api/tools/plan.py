"""What ``tools`` and ``tool_choice`` make of one chat request (vLLM's rules, OpenAI's shapes).

- no ``tool_choice``: ``"auto"`` when there are tools, else ``"none"``;
- ``"none"``: the tools still go to the chat template; the reply is text;
- ``"auto"``: the model writes calls in its own syntax, read by the server's
  ``--tool-call-parser`` (needs ``--enable-auto-tool-choice``; without it a 400, as vLLM);
- ``"required"``: the output is constrained to a JSON array of ``{"name", "parameters"}``
  objects, one of the tools each (at most one without ``parallel_tool_calls``), so it works on
  any model, whatever its template knows of tools;
- a named function: the output is constrained to that function's ``parameters`` schema.

Every refusal is a 400 naming the field (``tools``, ``tool_choice``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from loraplex.api.tools.parsers import PARSERS, NamedParser, RequiredParser, ToolCallParser
from loraplex.api.tools.schemas import FUNCTION_NAME, NamedToolChoice, ToolDefinition
from loraplex.config import StructuredConfig
from loraplex.engine import ConstraintSpec, ParameterError
from loraplex.engine import constraint_specs as specs

NAME = re.compile(FUNCTION_NAME)
CHOICES = ("none", "auto", "required")
NO_ARGUMENTS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """``choice``: none, auto, required or named; ``template_tools``: what the chat template
    gets; ``constraint``: the tool-call constraint (required, named); ``parser``: which
    parser reads the calls (None: plain text); ``special_tokens``: decode special tokens
    (the parser's markers are special tokens of this tokenizer)."""

    choice: str
    template_tools: list[dict[str, Any]] | None = None
    constraint: ConstraintSpec | None = None
    parser: str | None = None
    function: str | None = None
    parallel: bool = True
    special_tokens: bool = False

    def new_parser(self) -> ToolCallParser | None:
        """A fresh parser for one choice (None: the reply is text)."""
        if self.parser == "named":
            return NamedParser(str(self.function))
        if self.parser == "required":
            return RequiredParser(self.parallel)
        return None if self.parser is None else PARSERS[self.parser](self.parallel)


def check_tools(tools: list[ToolDefinition]) -> dict[str, dict[str, Any]]:
    """Each function's parameters schema by name; 400 (``tools``) for a malformed tool."""
    found: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.type != "function":
            raise ParameterError("tools", f"{where}.type must be 'function', got {tool.type!r}")
        name, params = tool.function.name, tool.function.parameters
        if not NAME.match(name):
            raise ParameterError("tools", f"{where}.function.name must match {FUNCTION_NAME}")
        if name in found:
            raise ParameterError("tools", f"{where}: two tools are named {name!r}")
        if params is None:
            params = NO_ARGUMENTS
        kind = params.get("type", "object") if isinstance(params, dict) else None
        if kind != "object" or not isinstance(params.get("properties", {}), dict):
            raise ParameterError(
                "tools", f"{where}.function.parameters must be a JSON schema of an object"
            )
        found[name] = params
    return found


def calls_schema(functions: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The JSON schema of ``tool_choice: "required"``'s output: ``[{"name", "parameters"}]``."""
    items = [
        {
            "type": "object",
            "properties": {"name": {"enum": [name]}, "parameters": params},
            "required": ["name", "parameters"],
        }
        for name, params in functions.items()
    ]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": items}, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def plan_tools(
    tools: list[ToolDefinition] | None,
    tool_choice: str | NamedToolChoice | None,
    parallel: bool | None,
    config: StructuredConfig,
    special_tokens: set[str],
    constrained: bool,
) -> ToolPlan:
    """The plan of a request; ``special_tokens``: the tokenizer's; ``constrained``: the
    request already has a constraint (``response_format``...), which only text replies take."""
    parallel = True if parallel is None else parallel
    if not tools:
        if tool_choice not in (None, "none"):
            raise ParameterError("tool_choice", "tool_choice needs tools")
        return ToolPlan("none")
    functions = check_tools(tools)
    template = [tool.model_dump(exclude_none=True) for tool in tools]
    choice = tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in functions:
            raise ParameterError("tool_choice", f"tool_choice names {name!r}, not among tools")
        _not_both(constrained)
        spec = specs.json_schema(functions[name], "tools")
        return ToolPlan("named", template, spec, "named", name, parallel)
    if choice not in CHOICES:
        raise ParameterError(
            "tool_choice", f"tool_choice must be one of {', '.join(CHOICES)} or a named function"
        )
    if choice == "none":
        return ToolPlan("none", template, parallel=parallel)
    if choice == "required":
        _not_both(constrained)
        spec = specs.json_schema(calls_schema(functions, parallel), "tools")
        return ToolPlan("required", template, spec, "required", parallel=parallel)
    if not (config.enable_auto_tool_choice and config.tool_call_parser):
        raise ParameterError(
            "tool_choice",
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to '
            'be set (or send tool_choice "required", "none" or a named function)',
        )
    parser = config.tool_call_parser
    special = any(marker in special_tokens for marker in PARSERS[parser].markers)
    return ToolPlan("auto", template, None, parser, parallel=parallel, special_tokens=special)


def _not_both(constrained: bool) -> None:
    if constrained:
        raise ParameterError(
            "tool_choice",
            "a required or named tool_choice constrains the output itself; it cannot be "
            "combined with response_format or structured_outputs",
        )


def template_arguments(arguments: str | dict[str, Any]) -> Any:
    """A past call's arguments as chat templates expect them: an object (vLLM parses them
    too); text that is not a JSON object stays text."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments
