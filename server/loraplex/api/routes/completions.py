"""``POST /v1/completions``: one engine request per prompt, all run concurrently; JSON or SSE.

The machinery (adapters, tokenizing, streams, disconnects, errors mid-stream) is in
:mod:`loraplex.api.generation`; this module only shapes OpenAI's legacy completion objects.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response

from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.generation import (
    Choice,
    Chunks,
    Run,
    request_adapter,
    run_to_end,
    stream_response,
    tokenize,
)
from loraplex.api.logprobs import completion_logprobs
from loraplex.api.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from loraplex.engine.outputs import RequestOutput

router = APIRouter(prefix="/v1", tags=["completions"], dependencies=[AuthDep])


@router.post("/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep
) -> Response | CompletionResponse:
    """OpenAI's legacy completions: ``n`` choices per prompt, with ``logprobs`` if asked.

    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    adapter = request_adapter(engine, body)
    params = body.sampling_params()
    prompts = [tokenize(engine, p) for p in body.prompts()]
    run = Run(engine, prompts, params, adapter, "cmpl", body.n, body.cache_salt)
    tokenizer = engine.tokenizer
    if body.stream:
        chunks = Chunks(run, body, CompletionStreamResponse)
        offsets = [0] * len(run.choices)  # each choice's text so far, in characters

        def render(choice: Choice, out: RequestOutput) -> Iterator[str]:
            # Empty deltas (the detokenizer holding back half a character) carry nothing.
            if out.text or out.finished or out.logprobs:
                logprobs = None
                if out.logprobs is not None:
                    offset = offsets[choice.index]
                    logprobs, offsets[choice.index] = completion_logprobs(
                        tokenizer, out.logprobs, offset
                    )
                delta = CompletionChoice(
                    index=choice.index,
                    text=out.text,
                    finish_reason=out.finish_reason,
                    logprobs=logprobs,
                )
                yield chunks.choices(delta)

        return await stream_response(run, render, tail=chunks.tail)
    if not await run_to_end(request, run):
        return Response(status_code=499)  # nobody is listening; the status is for the access log
    choices = [
        CompletionChoice(
            index=c.index,
            text=c.full_text,
            finish_reason=c.finish_reason,
            logprobs=None
            if params.logprobs is None
            else completion_logprobs(tokenizer, c.logprobs, 0)[0],
        )
        for c in run.choices
    ]
    return CompletionResponse(
        id=run.id, created=run.created, model=body.model, choices=choices, usage=run.usage()
    )
