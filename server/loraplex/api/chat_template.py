"""Rendering a conversation with the model's chat template, bounded before it renders.

A template renders every message with some text of its own around the content (role markers,
turn tokens). Before rendering, a conversation is refused when the least it can render,

    ``Σ_i len(content_i) + Σ_i overhead(role_i)``,

already exceeds the context in characters (``max_model_len × max_chars_per_token``, as
:meth:`~loraplex.engine.intake.Intake.check_length`). ``overhead(role)`` is what one more
empty message of that role adds to a short conversation, measured once per tokenizer with a
few tiny renders (0 for a role the probe cannot measure, or whose messages add nothing), so
the estimate stays below what the template renders and refuses nothing that could fit.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2

from loraplex.api.errors import APIError
from loraplex.engine import AsyncEngine, ParameterError

Conversation = list[dict[str, Any]]  # role, content (+ tool_calls / tool_call_id)


def _render(
    tokenizer: Any,
    messages: Conversation,
    generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
        )
    )


@functools.cache
def message_overheads(tokenizer: Any) -> dict[str, int]:
    """Characters one more empty message of each role adds, appended to a conversation that
    stays valid for templates that want roles to alternate and the system message first."""

    def empty(role: str) -> dict[str, str]:
        return {"role": role, "content": ""}

    user, assistant, system = empty("user"), empty("assistant"), empty("system")
    probes = {  # role: (conversation, the same with one more message of that role)
        "user": ([user, assistant], [user, assistant, user]),
        "assistant": ([user, assistant, user], [user, assistant, user, assistant]),
        "system": ([user], [system, user]),
    }
    overheads = {}
    for role, (shorter, longer) in probes.items():
        try:
            added = len(_render(tokenizer, longer, False)) - len(_render(tokenizer, shorter, False))
        except Exception:  # any template error: this role is not measured
            added = 0
        overheads[role] = max(added, 0)
    return overheads


def check_rendered_length(engine: AsyncEngine, conversation: Conversation) -> None:
    """400 (``messages``) when the least ``conversation`` can render is already longer than the
    context, in characters; nothing is rendered to find out."""
    overheads = message_overheads(engine.tokenizer)
    least = sum(len(m.get("content") or "") + overheads.get(m["role"], 0) for m in conversation)
    limit = engine.intake.max_prompt_chars
    if least > limit:
        raise ParameterError(
            "messages",
            f"the {len(conversation)} messages render to at least {least} characters with the "
            f"chat template, so more tokens than the model's context length of "
            f"{engine.max_model_len} tokens",
        )


def render_chat(
    engine: AsyncEngine, messages: Conversation, tools: list[dict[str, Any]] | None = None
) -> str:
    """The prompt text of ``messages`` (and ``tools``, for templates that know them) with the
    assistant's turn opened; 400 when the model has
    no chat template, when the messages cannot fit the context (:func:`check_rendered_length`)
    or when its template refuses the conversation (e.g. roles that don't alternate). Runs in
    the text pool (the probes of the first call included), never on the event loop.
    """
    tokenizer = engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400,
            f"The model `{engine.model_name}` has no chat template, so it cannot serve chat "
            "completions; use /v1/completions with a formatted prompt instead.",
            param="messages",
            code="chat_template_missing",
        )
    check_rendered_length(engine, messages)
    try:
        text = _render(tokenizer, messages, tools=tools)
    except jinja2.TemplateError as exc:
        message = f"The chat template refused the messages: {exc}"
        raise APIError(400, message, param="messages", code="invalid_value") from exc
    engine.intake.check_encodable(text, "messages")
    return text
