"""Pydantic models of ``POST /v1/chat/completions`` (OpenAI's chat completions)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from loraplex.api.logprobs import ChatLogprobs
from loraplex.api.schema_docs import doc
from loraplex.api.schemas import Logprobs, OpenAIChunk, OpenAIResponse, SamplingRequest
from loraplex.api.tools.plan import template_arguments
from loraplex.api.tools.schemas import NamedToolChoice, ToolCall, ToolDefinition
from loraplex.config import ServerConfig
from loraplex.engine import ParameterError, SamplingParams, check_logprobs

# The serving app's --max-chat-messages, set for each chat request by the chat router's
# dependency (which FastAPI runs before it validates the body); its default elsewhere.
MAX_CHAT_MESSAGES: ContextVar[int] = ContextVar(
    "max_chat_messages", default=ServerConfig.max_chat_messages
)


def count_messages(value: Any) -> Any:
    """Refuse, from the raw JSON, more than ``MAX_CHAT_MESSAGES`` messages or content parts
    in all: 300,000 empty messages took 0.85 s to validate on the event loop and seconds to
    render. Anything else is left to the field's own validation."""
    if not isinstance(value, list):
        return value
    limit = MAX_CHAT_MESSAGES.get()
    if len(value) <= limit:  # then the parts: one pass over at most `limit` messages
        contents = (m.get("content") for m in value if isinstance(m, dict))
        parts = sum(len(c) for c in contents if isinstance(c, list))
        if parts <= limit:
            return value
        count, what = parts, "content parts"
    else:
        count, what = len(value), "messages"
    raise PydanticCustomError(
        "too_long",
        "{count} {what}; at most {limit} are accepted (--max-chat-messages)",
        {"count": count, "what": what, "limit": limit},
    )


class TextPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["type", "text"]})

    type: Annotated[str, doc(enum=["text"])]
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's past calls
    tool_call_id: str | None = Field(None, description="Needed by role tool: the call it answers.")


class ChatCompletionRequest(SamplingRequest):
    """Body of ``POST /v1/chat/completions``; ``model`` and the sampling fields as completions.

    Without ``max_completion_tokens`` (or its older name ``max_tokens``) a reply may use the
    rest of the context, as OpenAI's and vLLM's do.
    """

    messages: Annotated[list[ChatMessage], doc(minItems=1)] = Field(
        description="The conversation; rendered by the chat template, its tokens plus "
        "max_completion_tokens must fit the model's context. At most --max-chat-messages "
        "messages (2048 by default, as OpenAI's), and as many content parts in all."
    )
    max_tokens: Annotated[int | None, doc(minimum=1)] = None
    max_completion_tokens: Annotated[int | None, doc(minimum=1)] = None
    logprobs: bool = False
    top_logprobs: Logprobs | None = Field(None, description="Needs logprobs=true.")
    tools: list[ToolDefinition] | None = Field(
        None, description='Without tool_choice, "auto" (which needs --enable-auto-tool-choice).'
    )
    tool_choice: Annotated[str, doc(enum=["none", "auto", "required"])] | NamedToolChoice | None = (
        Field(
            None,
            description="Needs tools (a named function among them); required and named "
            "constrain the output, so not with another constraint.",
        )
    )
    parallel_tool_calls: bool | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        return count_messages(value)

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as the chat template expects them: ``[{"role", "content": str}]``,
        with an assistant's ``tool_calls`` (arguments as objects) and a tool message's
        ``tool_call_id``.

        Text parts are joined with newlines; ``developer`` (OpenAI's newer name) is ``system``.
        Raises :class:`ParameterError` (param ``messages``) for no messages or non-text parts.
        """
        if not self.messages:
            raise ParameterError("messages", "messages must not be empty")
        out = []
        for i, message in enumerate(self.messages):
            content = message.content
            if isinstance(content, list):
                for part in content:
                    if part.type != "text" or part.text is None:
                        raise ParameterError(
                            "messages",
                            f"messages[{i}]: only text content parts are supported, "
                            f"got {part.type!r}",
                        )
                content = "\n".join(part.text or "" for part in content)
            if message.role == "tool" and not message.tool_call_id:
                raise ParameterError(
                    "messages", f"messages[{i}]: a tool message needs tool_call_id"
                )
            role = "system" if message.role == "developer" else message.role
            entry: dict[str, Any] = {"role": role, "content": content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": call.type,
                        "function": {
                            "name": call.function.name,
                            "arguments": template_arguments(call.function.arguments),
                        },
                    }
                    for call in message.tool_calls
                ]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            out.append(entry)
        return out

    def sampling_params(self, prompt_tokens: int, max_model_len: int) -> SamplingParams:
        """The engine's sampling parameters for a rendered prompt of ``prompt_tokens`` tokens;
        raises :class:`ParameterError` for a bad value."""
        if self.top_logprobs is not None and not self.logprobs:
            raise ParameterError("top_logprobs", "top_logprobs requires logprobs=true")
        check_logprobs(self.top_logprobs, "top_logprobs")
        max_tokens = self.max_completion_tokens
        if max_tokens is None:
            max_tokens = self.max_tokens
        if max_tokens is None:
            max_tokens = max(1, max_model_len - prompt_tokens)
        return self._params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class ChatResponseMessage(BaseModel):
    """The reply: its text (None when it is only tool calls) and its tool calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(OpenAIResponse[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"


class ChatStreamChoice(BaseModel):
    """A chunk's choice: ``delta`` is ``{"role": "assistant"}`` first, then ``{"content"}``
    (or ``{"tool_calls"}``) deltas, then ``{}`` with the ``finish_reason``."""

    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(OpenAIChunk[ChatStreamChoice]):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
