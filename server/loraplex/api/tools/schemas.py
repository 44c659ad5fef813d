"""Pydantic models of OpenAI's tool fields: ``tools``, a named ``tool_choice``, the assistant
``tool_calls`` of requests and responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class FunctionDefinition(BaseModel):
    """A tool's function: ``parameters`` is a JSON schema of its arguments (an object)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    description: str | None = None
    parameters: Any = None  # checked by plan.check_tools, so a bad one is a 400 naming tools
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``: call that function."""

    model_config = ConfigDict(extra="ignore")

    type: str = "function"
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
