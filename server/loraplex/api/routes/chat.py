"""``POST /v1/chat/completions``: the messages rendered by the model's chat template, then one
engine request, exactly as a completion (:mod:`loraplex.api.generation`); JSON or SSE."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
from loraplex.api.errors import request_tenant
from loraplex.api.generation import (
    Choice,
    Run,
    check_prompt_length,
    request_adapter,
    run_to_end,
    tokenize,
)
from loraplex.api.logprobs import ChatLogprobs, chat_logprobs
from loraplex.api.streaming import Chunks, stream_response
from loraplex.api.text_pool import text_pool
from loraplex.engine.outputs import RequestOutput, TokenLogprob


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

    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    adapter = request_adapter(engine, principal, body)
    tenant = request_tenant(request)
    engine.check_admission(tenant)  # a full queue answers 429 before any rendering
    conversation = body.conversation()
    check_prompt_length(engine, "".join(m["content"] for m in conversation), "messages")
    text = await text_pool(request).run(render_chat, engine, conversation)
    # The template writes the special tokens (BOS, turn markers) itself: don't add them again.
    prompt = await tokenize(request, engine, text, special=False, param="messages")
    params = body.sampling_params(len(prompt), engine.max_model_len)
    salt = principal.cache_salt(body.cache_salt)  # prefix blocks are shared within a tenant only
    run = Run(engine, [prompt], params, adapter, "chatcmpl", body.n, salt, tenant)
    tokenizer = engine.tokenizer
    as_ids = body.return_tokens_as_token_ids

    def logprobs_of(entries: Sequence[TokenLogprob] | None) -> ChatLogprobs | None:
        return None if entries is None else chat_logprobs(tokenizer, entries, as_ids)

    if not body.stream:
        if not await run_to_end(request, run):
            return Response(status_code=499)  # nobody is listening; for the access log
        choices = [
            ChatChoice(
                index=c.index,
                message=ChatResponseMessage(content=c.full_text),
                finish_reason=c.finish_reason,
                logprobs=None if params.logprobs is None else logprobs_of(c.logprobs),
            )
            for c in run.choices
        ]
        return ChatCompletionResponse(
            id=run.id, created=run.created, model=body.model, choices=choices, usage=run.usage()
        )

    chunks = Chunks(run, body, ChatCompletionChunk)

    def chunk(
        index: int,
        delta: dict[str, str],
        finish: str | None = None,
        logprobs: ChatLogprobs | None = None,
    ) -> str:
        choice = ChatStreamChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        return chunks.choices(choice)

    def render(choice: Choice, out: RequestOutput) -> Iterator[str]:
        # An empty delta (the detokenizer holding back half a character) carries nothing, unless
        # its token's logprobs were asked for.
        logprobs = logprobs_of(out.logprobs)
        if out.text or logprobs is not None:
            yield chunk(choice.index, {"content": out.text}, logprobs=logprobs)
        if out.finished:
            yield chunk(choice.index, {}, out.finish_reason)

    head = [chunk(c.index, {"role": "assistant"}) for c in run.choices]
    return await stream_response(request, run, render, head=head, tail=chunks.tail)
