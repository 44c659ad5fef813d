"""What a request asks its output to match, as plain data (no grammar library here).

A :class:`ConstraintSpec` is a kind and a text; the text is the cache key of the compiled
grammar (``service.py``), so equal constraints compile once. JSON schemas are written back
without spaces, so the same schema pretty-printed is the same key (keys keep their order:
a schema's property order is the order the output writes them in). ``param`` names the
request field the constraint came from, so an error about it is a 400 naming that field; it
is not part of the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from loraplex.engine.request.params import ParameterError

# json_schema: a JSON schema; json_object: any JSON object (text unused); regex; choice: one of
# a list of strings (text: the JSON list); grammar: EBNF (GBNF-style "::=" rules) or Lark.
KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")


class ConstraintError(ParameterError):
    """A constraint that cannot be compiled, or is over a cap: a 400 naming ``param``."""


@dataclass(frozen=True)
class ConstraintSpec:
    """One request's constraint: ``kind`` (one of KINDS) and its ``text``."""

    kind: str
    text: str
    param: str = field(default="response_format", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown constraint kind {self.kind!r}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.text)


def json_schema(schema: object, param: str) -> ConstraintSpec:
    """A JSON schema given as a dict/bool or as JSON text; 400 (``param``) if it is neither."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConstraintError(param, f"{param} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise ConstraintError(param, f"{param} must be a JSON schema (an object)")
    # Not sorted: the order of "properties" is the order the output writes them in.
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    return ConstraintSpec("json_schema", text, param)


def choice(options: list[str], param: str) -> ConstraintSpec:
    """Exactly one of ``options`` (non-empty strings, at least one)."""
    if not options or not all(isinstance(o, str) and o for o in options):
        raise ConstraintError(param, f"{param} must be a non-empty list of non-empty strings")
    return ConstraintSpec("choice", json.dumps(options, ensure_ascii=False), param)


def text_spec(kind: str, text: str, param: str) -> ConstraintSpec:
    """A regex or a grammar (non-empty text)."""
    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(param, f"{param} must be a non-empty string")
    return ConstraintSpec(kind, text, param)


def schema_depth(schema: object) -> int:
    """How deeply ``schema``'s objects and arrays nest (iterative: no recursion limit)."""
    deepest, stack = 0, [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            values = node.values() if isinstance(node, dict) else node
            stack.extend((value, depth + 1) for value in values)
    return deepest
