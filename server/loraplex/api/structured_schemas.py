"""The request fields that constrain the output, in the shapes clients send them, and the one
:class:`ConstraintSpec` they come to (``engine/constraints``).

- OpenAI's ``response_format``: ``{"type": "text"}`` (none), ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (what the openai
  SDK's ``parse()`` sends);
- vLLM's ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object"}``,
  and its older top-level names ``guided_json``, ``guided_regex``, ``guided_choice``,
  ``guided_grammar``;
- TGI's ``parameters.grammar`` on ``/generate``: ``{"type": "json" | "regex", "value"}``.

At most one constraint per request; a second is a 400 naming it. Whether the schema, regex or
grammar is valid is decided when it is compiled (a 400 naming the field, before the request
is queued).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from loraplex.api.schema_docs import doc
from loraplex.engine import ConstraintSpec
from loraplex.engine import constraint_specs as specs

RESPONSE_FORMATS = ("text", "json_object", "json_schema")
GRAMMAR_TYPES = ("json", "regex")
Choices = Annotated[list[Annotated[str, doc(minLength=1)]], doc(minItems=1)]
# A schema, a regex or a grammar must compile (a 400 with code "invalid_constraint" if not).
COMPILED = "Must compile: otherwise a 400 (code invalid_constraint) naming this field."


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: ``schema`` is the JSON schema; ``strict`` is accepted
    (the output always follows the schema)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``; ``type`` is one of RESPONSE_FORMATS."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, doc(enum=list(RESPONSE_FORMATS))]
    json_schema: JsonSchemaFormat | None = Field(
        None, description=f'Needed (with its schema) by type "json_schema". {COMPILED}'
    )


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its fields (each must compile: otherwise
    a 400 with code invalid_constraint)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    json_: dict[str, Any] | bool | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: Choices | None = None
    grammar: str | None = Field(None, description="EBNF (GBNF-style ::= rules) or Lark.")
    json_object: bool | None = None


class GrammarParameter(BaseModel):
    """TGI's ``parameters.grammar``: a JSON schema (object or text) or a regex."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, doc(enum=list(GRAMMAR_TYPES))]
    value: dict[str, Any] | bool | str = Field(
        description=f"A JSON schema (object or text) for json, a string for regex. {COMPILED}"
    )


class StructuredFields(BaseModel):
    """The constraint fields the OpenAI routes share (chat and completions)."""

    response_format: ResponseFormat | None = Field(
        None, description="At most one constraint per request (this or another field)."
    )
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | bool | str | None = Field(None, description=COMPILED)
    guided_regex: str | None = Field(None, description=COMPILED)
    guided_choice: Choices | None = None
    guided_grammar: str | None = Field(None, description=COMPILED)

    def constraint(self) -> ConstraintSpec | None:
        """The request's one constraint, or None; ParameterError (400) naming the field for
        a malformed or second one."""
        found = [
            spec
            for spec in (
                response_format_spec(self.response_format),
                structured_spec(self.structured_outputs),
                guided_spec("guided_json", self.guided_json),
                guided_spec("guided_regex", self.guided_regex),
                guided_spec("guided_choice", self.guided_choice),
                guided_spec("guided_grammar", self.guided_grammar),
            )
            if spec is not None
        ]
        if len(found) > 1:
            names = ", ".join(spec.param for spec in found)
            raise specs.ConstraintError(found[1].param, f"give one constraint, not {names}")
        return found[0] if found else None


def response_format_spec(fmt: ResponseFormat | None) -> ConstraintSpec | None:
    param = "response_format"
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ConstraintSpec("json_object", "", param)
    if fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise specs.ConstraintError(
                param, 'response_format of type "json_schema" needs json_schema.schema'
            )
        return specs.json_schema(fmt.json_schema.schema_, param)
    raise specs.ConstraintError(
        param,
        f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt.type!r}",
    )


def structured_spec(outputs: StructuredOutputs | None) -> ConstraintSpec | None:
    param = "structured_outputs"
    if outputs is None:
        return None
    given = {
        name: value
        for name, value in (
            ("json", outputs.json_),
            ("regex", outputs.regex),
            ("choice", outputs.choice),
            ("grammar", outputs.grammar),
            ("json_object", outputs.json_object or None),
        )
        if value is not None
    }
    if len(given) != 1:
        raise specs.ConstraintError(
            param,
            "structured_outputs needs exactly one of json, regex, choice, grammar, "
            f"json_object; got {', '.join(given) or 'none'}",
        )
    [(name, value)] = given.items()
    return _spec(name, value, param)


def guided_spec(name: str, value: Any) -> ConstraintSpec | None:
    return None if value is None else _spec(name.removeprefix("guided_"), value, name)


def grammar_parameter_spec(grammar: GrammarParameter | None) -> ConstraintSpec | None:
    """TGI's ``grammar`` (``param`` "grammar")."""
    if grammar is None:
        return None
    if grammar.type not in GRAMMAR_TYPES:
        raise specs.ConstraintError(
            "grammar",
            f"grammar.type must be one of {', '.join(GRAMMAR_TYPES)}, got {grammar.type!r}",
        )
    if grammar.type == "regex" and not isinstance(grammar.value, str):
        raise specs.ConstraintError("grammar", "a regex grammar's value must be a string")
    return _spec(grammar.type, grammar.value, "grammar")


def _spec(kind: str, value: Any, param: str) -> ConstraintSpec:
    if kind == "json":
        return specs.json_schema(value, param)
    if kind == "json_object":
        return ConstraintSpec("json_object", "", param)
    if kind == "choice":
        return specs.choice(value, param)
    return specs.text_spec(kind, value, param)
