"""``POST /v1/completions``: one engine request per prompt, all run concurrently; JSON or SSE.

The machinery (adapters, tokenizing, streams, disconnects, errors mid-stream) is in
:mod:`loraplex.api.generation`; this module only shapes OpenAI's legacy completion objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response

from loraplex.api.auth import GENERATE, PrincipalDep, allow
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.generation import Choice, Run, request_adapter, run_to_end, start
from loraplex.api.logprobs import CompletionLogprobs, completion_logprobs
from loraplex.api.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from loraplex.api.streaming import Chunks, stream_response
from loraplex.api.text_pool import text_pool
from loraplex.engine import RequestOutput

router = APIRouter(prefix="/v1", tags=["completions"], dependencies=[AuthDep, allow(GENERATE)])


class Echo:
    """With ``echo``: the prompt text, and its tokens' logprobs if asked, ahead of a choice's
    first text (choice ``i`` echoes prompt ``i // n``). Without it: nothing."""

    def __init__(self, body: CompletionRequest, texts: list[str], tokenizer: Any, run: Run) -> None:
        self.enabled, self.tokenizer, self.run = body.echo, tokenizer, run
        self.as_ids = body.return_tokens_as_token_ids
        self.texts = texts  # the prompts as text, when echoed (see echo_texts)

    def text(self, choice: Choice) -> str:
        return self.texts[choice.index // self.run.n] if self.enabled else ""

    def logprobs(self, choice: Choice) -> tuple[CompletionLogprobs | None, int]:
        """The prompt's logprobs object and the offset where the completion's tokens start."""
        if not self.enabled or choice.prompt_logprobs is None:
            return None, 0
        ids = self.run.prompt_ids(choice)
        as_ids = self.as_ids
        return completion_logprobs(self.tokenizer, choice.prompt_logprobs, 0, ids, as_ids)


def echo_texts(tokenizer: Any, prompts: list[str | list[int]]) -> list[str]:
    """The prompts as text (token-id prompts decoded: run it in the text pool)."""
    return [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]


def join(head: CompletionLogprobs | None, tail: CompletionLogprobs) -> CompletionLogprobs:
    return tail if head is None else head + tail


@router.post("/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep, principal: PrincipalDep
) -> Response | CompletionResponse:
    """OpenAI's legacy completions: ``n`` choices per prompt, with ``logprobs`` if asked, and
    with ``echo`` the prompt (and its logprobs) ahead of each choice's text.

    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    adapter = request_adapter(engine, principal, body)
    params = body.sampling_params()
    raw_prompts = body.prompts()
    salt = body.cache_salt
    run = await start(
        request, engine, principal, adapter, raw_prompts, params, n=body.n, cache_salt=salt
    )
    tokenizer = engine.tokenizer
    texts: list[str] = []
    try:
        if body.echo:
            texts = await text_pool(request).run(echo_texts, tokenizer, raw_prompts)
    except BaseException:  # the request runs already: stop it
        run.close()
        raise
    echo = Echo(body, texts, tokenizer, run)
    if body.stream:
        chunks = Chunks(run, body, CompletionStreamResponse)
        offsets: dict[int, int] = {}  # each choice's text so far, in characters

        def render(choice: Choice, out: RequestOutput) -> Iterator[str]:
            first = choice.index not in offsets
            head, offset = echo.logprobs(choice) if first else (None, offsets[choice.index])
            offsets[choice.index] = offset
            text = (echo.text(choice) if first else "") + out.text
            # Empty deltas (the detokenizer holding back half a character) carry nothing.
            if text or out.finished or out.logprobs or head:
                logprobs = head
                if out.logprobs is not None:
                    tail, offsets[choice.index] = completion_logprobs(
                        tokenizer, out.logprobs, offset, as_ids=echo.as_ids
                    )
                    logprobs = join(head, tail)
                delta = CompletionChoice(
                    index=choice.index,
                    text=text,
                    finish_reason=out.finish_reason,
                    logprobs=logprobs,
                )
                yield chunks.choices(delta)

        return await stream_response(request, run, render, tail=chunks.tail)
    if not await run_to_end(request, run):
        return Response(status_code=499)  # nobody is listening; the status is for the access log

    def choice_logprobs(c: Choice) -> CompletionLogprobs | None:
        if params.logprobs is None:
            return None
        head, offset = echo.logprobs(c)
        tail, _ = completion_logprobs(tokenizer, c.logprobs, offset, as_ids=echo.as_ids)
        return join(head, tail)

    choices = [
        CompletionChoice(
            index=c.index,
            text=echo.text(c) + c.full_text,
            finish_reason=c.finish_reason,
            logprobs=choice_logprobs(c),
        )
        for c in run.choices
    ]
    return CompletionResponse(
        id=run.id, created=run.created, model=body.model, choices=choices, usage=run.usage()
    )
