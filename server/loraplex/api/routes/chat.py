"""``POST /v1/chat/completions``: the messages rendered by the model's chat template, then one
engine request, exactly as a completion (:mod:`loraplex.api.generation`); JSON or SSE."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jinja2
from fastapi import APIRouter, Request, Response

from loraplex.api.auth import PrincipalDep
from loraplex.api.chat_schemas import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatResponseMessage,
    ChatStreamChoice,
)
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.errors import APIError
from loraplex.api.generation import Choice, request_adapter, run_to_end, start
from loraplex.api.logprobs import ChatLogprobs, chat_logprobs
from loraplex.api.streaming import Chunks, stream_response
from loraplex.api.text_pool import text_pool
from loraplex.engine import AsyncEngine, RequestOutput, SamplingParams, TokenLogprob

router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[AuthDep])


def render_chat(engine: AsyncEngine, messages: list[dict[str, str]]) -> str:
    """The prompt text of ``messages`` with the assistant's turn opened; 400 when the model has
    no chat template or its template refuses the conversation (e.g. roles that don't alternate).
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
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError as exc:
        message = f"The chat template refused the messages: {exc}"
        raise APIError(400, message, param="messages", code="invalid_value") from exc
    engine.intake.check_encodable(str(text), "messages")
    return str(text)


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, engine: EngineDep, principal: PrincipalDep
) -> Response | ChatCompletionResponse:
    """OpenAI's chat completions: ``n`` choices, with ``logprobs``/``top_logprobs`` if asked.

    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    adapter = request_adapter(engine, principal, body)

    async def render() -> str:  # after the queue check: a full queue answers 429 first
        conversation = body.conversation()
        engine.intake.check_length("".join(m["content"] for m in conversation), "messages")
        return await text_pool(request).run(render_chat, engine, conversation)

    def sampling_params(prompt: list[int]) -> SamplingParams:  # max_tokens: what is left
        return body.sampling_params(len(prompt), engine.max_model_len)

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
