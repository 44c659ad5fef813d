"""Pydantic models of OpenAI's tool fields: ``tools``, a named ``tool_choice``, the assistant
``tool_calls`` of requests and responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplex.api.schema_docs import doc

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionDefinition(BaseModel):
    """A tool's function: ``parameters`` is a JSON schema of its arguments (an object)."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, doc(pattern=FUNCTION_NAME)] = Field(
        description="Unique among the request's tools."
    )
    description: str | None = None
    # Checked by plan.check_tools, so a bad one is a 400 naming tools.
    parameters: Annotated[Any, doc(type="object")] = Field(
        None,
        description='A JSON schema of an object ("type" absent or "object"); with tool_choice '
        "required or named it must compile (else a 400, code invalid_constraint).",
    )
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, doc(enum=["function"])] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``: call that function."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, doc(enum=["function"])] = "function"
    function: FunctionName


class FunctionCall(BaseModel):
    """A call's function; ``arguments`` is JSON text (a request may send an object)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
