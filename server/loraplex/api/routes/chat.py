"""``POST /v1/chat/completions``: the messages rendered by the model's chat template, then one
engine request, exactly as a completion (:mod:`loraplex.api.generation`); JSON or SSE."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from loraplex.api.auth import GENERATE, PrincipalDep, allow
from loraplex.api.chat_schemas import (
    MAX_CHAT_MESSAGES,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    ChatStreamChoice,
)
from loraplex.api.chat_template import render_chat
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.generation import Choice, request_adapter, run_to_end, start
from loraplex.api.logprobs import ChatLogprobs, chat_logprobs
from loraplex.api.streaming import Chunks, stream_response
from loraplex.api.text_pool import text_pool
from loraplex.api.tools.output import ToolStream, tool_message
from loraplex.api.tools.plan import ToolPlan, plan_tools
from loraplex.engine import AsyncEngine, RequestOutput, SamplingParams, TokenLogprob


async def chat_limits(request: Request) -> None:
    """Binds this app's ``--max-chat-messages`` for the body's validation, which FastAPI runs
    after the dependencies, in the same task (so this one is ``async``: a plain function
    would run in a worker thread, whose context the validation does not see)."""
    MAX_CHAT_MESSAGES.set(request.app.state.config.server.max_chat_messages)


router = APIRouter(
    prefix="/v1", tags=["chat"], dependencies=[AuthDep, allow(GENERATE), Depends(chat_limits)]
)


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, engine: EngineDep, principal: PrincipalDep
) -> Response | ChatCompletionResponse:
    """OpenAI's chat completions: ``n`` choices, with ``logprobs``/``top_logprobs`` if asked.

    Structured outputs (``response_format``, ``structured_outputs``) and tool calling
    (``tools``, ``tool_choice``, ``parallel_tool_calls``: ``api/tools``).
    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    adapter = request_adapter(engine, principal, body)
    plan = ToolPlan("none")  # the request's tools: planned once it passed the queue check

    async def render() -> str:  # after the queue check: a full queue answers 429 first
        nonlocal plan
        conversation = body.conversation()
        plan = _plan(request, engine, body)
        content = "".join(m.get("content") or "" for m in conversation)
        engine.intake.check_length(content, "messages")
        return await text_pool(request).run(render_chat, engine, conversation, plan.template_tools)

    def sampling_params(prompt: list[int]) -> SamplingParams:  # max_tokens: what is left
        params = body.sampling_params(len(prompt), engine.max_model_len)
        if plan.constraint is not None or plan.special_tokens:
            constraint = plan.constraint or params.constraint
            skip = not plan.special_tokens
            params = dataclasses.replace(params, constraint=constraint, skip_special_tokens=skip)
        return params

    run = await start(
        request,
        engine,
        principal,
        adapter,
        render,
        sampling_params,
        n=body.n,
        cache_salt=body.cache_salt,
        id_prefix="chatcmpl",
    )
    params = run.params
    tokenizer = engine.tokenizer
    as_ids = body.return_tokens_as_token_ids

    def logprobs_of(entries: Sequence[TokenLogprob] | None) -> ChatLogprobs | None:
        return None if entries is None else chat_logprobs(tokenizer, entries, as_ids)

    if not body.stream:
        if not await run_to_end(request, run):
            return Response(status_code=499)  # nobody is listening; for the access log
        choices = []
        for c in run.choices:
            content, calls, finish = tool_message(plan, c.full_text, c.finish_reason)
            choices.append(
                ChatChoice(
                    index=c.index,
                    message=ChatResponseMessage(content=content, tool_calls=calls),
                    finish_reason=finish,
                    logprobs=None if params.logprobs is None else logprobs_of(c.logprobs),
                )
            )
        return ChatCompletionResponse(
            id=run.id, created=run.created, model=body.model, choices=choices, usage=run.usage()
        )

    chunks = Chunks(run, body, ChatCompletionChunk)
    streams = [ToolStream(plan) for _ in run.choices]

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish: str | None = None,
        logprobs: ChatLogprobs | None = None,
    ) -> str:
        choice = ChatStreamChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        return chunks.choices(choice)

    def render(choice: Choice, out: RequestOutput) -> Iterator[str]:
        # An empty delta (the detokenizer holding back half a character) carries nothing, unless
        # its token's logprobs were asked for.
        logprobs = logprobs_of(out.logprobs)
        stream = streams[choice.index]
        deltas = stream.deltas(out.text, out.finished)
        if not deltas and logprobs is not None:
            deltas = [{"content": ""}]
        for i, delta in enumerate(deltas):
            yield chunk(choice.index, delta, logprobs=logprobs if i == 0 else None)
        if out.finished:
            yield chunk(choice.index, {}, stream.finish_reason(out.finish_reason))

    head = [chunk(c.index, {"role": "assistant"}) for c in run.choices]
    return await stream_response(request, run, render, head=head, tail=chunks.tail)


def _plan(request: Request, engine: AsyncEngine, body: ChatCompletionRequest) -> ToolPlan:
    """The request's tool plan (``api/tools/plan.py``) under the server's options."""
    config = request.app.state.config.structured
    special = set(getattr(engine.tokenizer, "all_special_tokens", ()))
    constrained = body.constraint() is not None
    return plan_tools(
        body.tools, body.tool_choice, body.parallel_tool_calls, config, special, constrained
    )
