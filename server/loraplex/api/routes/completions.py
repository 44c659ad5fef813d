"""``POST /v1/completions``: one engine request per prompt, all run concurrently; JSON or SSE.

Every error that can be known before the first byte (bad parameter, unknown model, prompt too
long) becomes an ordinary JSON error response; after the first byte it becomes one
``data: {"error": ...}`` event followed by ``data: [DONE]``. A client that hangs up stops our
iteration, which makes the engine abort the request and free its KV blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from loraplex import metrics
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.errors import APIError, error_body, to_api_error
from loraplex.api.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    UsageInfo,
)
from loraplex.engine.adapters import AdapterSpec
from loraplex.engine.async_engine import AsyncEngine
from loraplex.engine.outputs import RequestOutput
from loraplex.engine.sampling_params import SamplingParams

router = APIRouter(prefix="/v1", tags=["completions"], dependencies=[AuthDep])


def resolve_adapter(engine: AsyncEngine, model: str) -> str | None:
    """``model`` names the base model (no adapter) or an adapter; anything else is a 404."""
    if model == engine.model_name:
        return None
    if engine.has_adapter(model):
        return model
    raise APIError(
        404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
    )


def resolve_mix(engine: AsyncEngine, mix: list[tuple[str, float]]) -> AdapterSpec:
    """A weighted combination ``[(name, weight), ...]``; every name must exist (else 404)."""
    for name, _ in mix:
        if not engine.has_adapter(name):
            message = f"The adapter `{name}` does not exist."
            raise APIError(404, message, param="adapters", code="model_not_found")
    return mix


def tokenize(engine: AsyncEngine, prompt: str | list[int]) -> list[int]:
    """Token ids of one prompt, with only the special tokens the tokenizer adds by default.

    Token-id prompts pass through; the engine checks them against the model's vocabulary.
    """
    if isinstance(prompt, str):
        # Inline on the event loop: a fast tokenizer needs microseconds for a prompt that fits
        # the context, less than handing it to a thread would cost.
        return list(engine.tokenizer(prompt).input_ids)
    return prompt


@dataclass
class _Choice:
    """What one prompt has produced so far, and its share of the request's metrics."""

    index: int
    arrival: float
    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False
    finish_reason: str | None = None

    def add(self, out: RequestOutput) -> None:
        now = time.monotonic()
        if not self.started:
            self.started = True
            self.prompt_tokens = out.num_prompt_tokens
            metrics.record_first_token(now - self.arrival, out.num_prompt_tokens)
        metrics.record_generated_tokens(out.num_output_tokens - self.completion_tokens)
        self.completion_tokens = out.num_output_tokens
        self.text.append(out.text)
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"
            metrics.record_finished(self.finish_reason, now - self.arrival)


class _Run:
    """The engine streams of one HTTP request, pumped concurrently into one queue."""

    def __init__(
        self,
        engine: AsyncEngine,
        prompts: list[list[int]],
        params: SamplingParams,
        adapter: AdapterSpec,
    ) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        arrival = time.monotonic()
        self.choices = [_Choice(i, arrival) for i in range(len(prompts))]
        self._queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue()
        self._open = len(prompts)
        # Creating an engine stream runs nothing yet: it validates and queues on first iteration.
        self._tasks = [
            asyncio.create_task(
                self._pump(i, engine.generate(f"{self.id}-{i}", ids, params, adapter))
            )
            for i, ids in enumerate(prompts)
        ]

    async def _pump(self, i: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                self._queue.put_nowait((i, out))
        except Exception as exc:  # re-raised in the consumer, which knows how to report it
            self._queue.put_nowait((i, exc))
        else:
            self._queue.put_nowait((i, None))

    async def next(self) -> tuple[_Choice, RequestOutput] | None:
        """The next output of any prompt (recorded in its choice), or None when all are done."""
        while self._open:
            i, item = await self._queue.get()
            if item is None:
                self._open -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                self.choices[i].add(item)
                return self.choices[i], item
        return None

    def close(self) -> None:
        """Stop every stream; cancelling a pump closes its generator, so the engine aborts it."""
        for task in self._tasks:
            task.cancel()
        now = time.monotonic()
        for choice in self.choices:
            if choice.started and choice.finish_reason is None:
                choice.finish_reason = "abort"
                metrics.record_finished("abort", now - choice.arrival)

    async def aclose(self) -> None:
        self.close()

    def usage(self) -> UsageInfo:
        prompt = sum(c.prompt_tokens for c in self.choices)
        completion = sum(c.completion_tokens for c in self.choices)
        return UsageInfo(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


async def _drain_unless_disconnected(request: Request, run: _Run) -> bool:
    """Read every output of ``run``; False if the client hung up first."""

    async def drain() -> None:
        while await run.next() is not None:
            pass

    async def hang_up() -> None:
        # The body is already read, so the next ASGI message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(drain()), asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        work.cancel()  # no-op when done
    if work.done() and not work.cancelled():
        work.result()  # re-raises an engine error, for the error handlers
        return True
    return False


def _event(payload: str) -> str:
    return f"data: {payload}\n\n"


async def _sse(
    run: _Run, model: str, include_usage: bool, first: list[tuple[_Choice, RequestOutput]]
) -> AsyncIterator[str]:
    """Chunks of ``first`` (read before the response began), then the rest as they come."""
    usage_field = None if include_usage else {"usage"}

    def chunk(choice: _Choice, out: RequestOutput) -> str:
        delta = CompletionChoice(index=choice.index, text=out.text, finish_reason=out.finish_reason)
        body = CompletionStreamResponse(
            id=run.id, created=run.created, model=model, choices=[delta]
        )
        return _event(body.model_dump_json(exclude=usage_field))

    try:
        for choice, out in first:
            if out.text or out.finished:
                yield chunk(choice, out)
        while (item := await run.next()) is not None:
            # Empty deltas (the detokenizer holding back half a character) carry nothing.
            if item[1].text or item[1].finished:
                yield chunk(*item)
        if include_usage:
            last = CompletionStreamResponse(
                id=run.id, created=run.created, model=model, usage=run.usage()
            )
            yield _event(last.model_dump_json())
    except Exception as exc:
        err = to_api_error(exc)
        yield _event(json.dumps(error_body(err.message, err.type, err.param, err.code)))
    finally:
        run.close()
    yield _event("[DONE]")


@router.post("/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, engine: EngineDep
) -> Response | CompletionResponse:
    """OpenAI's legacy completions: one choice per prompt (``n`` must be 1).

    Extension: ``adapters`` (a weighted combination, with ``model`` the base model id).
    """
    mix = body.adapter_mix(engine.model_name)
    adapter = resolve_adapter(engine, body.model) if mix is None else resolve_mix(engine, mix)
    params = body.sampling_params()
    prompts = [tokenize(engine, p) for p in body.prompts()]
    run = _Run(engine, prompts, params, adapter)
    if body.stream:
        # Wait for every prompt's first output, so that errors the engine raises before
        # yielding (prompt too long, ...) still get a JSON error with the right status.
        first: list[tuple[_Choice, RequestOutput]] = []
        try:
            while not all(c.started for c in run.choices) and (item := await run.next()):
                first.append(item)
        except BaseException:
            run.close()
            raise
        return StreamingResponse(
            _sse(run, body.model, body.include_usage, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            # Runs even when the client left before the stream started (the generator's own
            # finally would not run then).
            background=BackgroundTask(run.aclose),
        )
    try:
        completed = await _drain_unless_disconnected(request, run)
    finally:
        run.close()
    if not completed:
        return Response(status_code=499)  # nobody is listening; the status is for the access log
    choices = [
        CompletionChoice(index=c.index, text="".join(c.text), finish_reason=c.finish_reason)
        for c in run.choices
    ]
    return CompletionResponse(
        id=run.id, created=run.created, model=body.model, choices=choices, usage=run.usage()
    )
