"""Pydantic models of ``POST /v1/chat/completions`` (OpenAI's chat completions)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplex.api.logprobs import ChatLogprobs
from loraplex.api.schema_docs import doc
from loraplex.api.schemas import Logprobs, OpenAIChunk, OpenAIResponse, SamplingRequest
from loraplex.engine import ParameterError, SamplingParams, check_logprobs


class TextPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["type", "text"]})

    type: Annotated[str, doc(enum=["text"])]
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    """Body of ``POST /v1/chat/completions``; ``model`` and the sampling fields as completions.

    Without ``max_completion_tokens`` (or its older name ``max_tokens``) a reply may use the
    rest of the context, as OpenAI's and vLLM's do.
    """

    messages: Annotated[list[ChatMessage], doc(minItems=1)] = Field(
        description="The conversation; rendered by the chat template, its tokens plus "
        "max_completion_tokens must fit the model's context."
    )
    max_tokens: Annotated[int | None, doc(minimum=1)] = None
    max_completion_tokens: Annotated[int | None, doc(minimum=1)] = None
    logprobs: bool = False
    top_logprobs: Logprobs | None = Field(None, description="Needs logprobs=true.")

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat template expects them: ``[{"role", "content": str}]``.

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
            role = "system" if message.role == "developer" else message.role
            out.append({"role": role, "content": content or ""})
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
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(OpenAIResponse[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"


class ChatStreamChoice(BaseModel):
    """A chunk's choice: ``delta`` is ``{"role": "assistant"}`` first, then ``{"content"}``
    deltas, then ``{}`` with the ``finish_reason``."""

    index: int
    delta: dict[str, str]
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(OpenAIChunk[ChatStreamChoice]):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
