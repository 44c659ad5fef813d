"""Server-sent events of a :class:`~loraplex.api.generation.Run`: the OpenAI chunk payloads
and the streaming response.

Every error that can be known before the first byte still becomes an ordinary JSON error
response (the response waits for each choice's first output); after the first byte it becomes
one ``data: {"error": ...}`` event (then ``data: [DONE]`` on the OpenAI routes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from loraplex.api.errors import report, to_api_error
from loraplex.api.generation import Choice, Run, unless_hung_up
from loraplex.api.schemas import OpenAIChunk, SamplingRequest
from loraplex.engine import RequestOutput


class Chunks:
    """The SSE payloads of an OpenAI stream as ``chunk_type`` (an :class:`OpenAIChunk`): chunks
    of choices, and with ``stream_options.include_usage`` a last chunk of the usage (:meth:`tail`).
    Only then do the chunks of choices have a ``usage`` field (null), as OpenAI's do.
    """

    def __init__(self, run: Run, body: SamplingRequest, chunk_type: type[OpenAIChunk]) -> None:
        self._run, self._model, self._type = run, body.model, chunk_type
        self._include_usage = body.include_usage

    def _new(self, **fields: object) -> OpenAIChunk:
        run = self._run
        return self._type(id=run.id, created=run.created, model=self._model, **fields)

    def choices(self, *choices: BaseModel) -> str:
        exclude = None if self._include_usage else {"usage"}
        return self._new(choices=list(choices)).model_dump_json(exclude=exclude)

    def tail(self) -> Iterator[str]:
        if self._include_usage:
            yield self._new(usage=self._run.usage()).model_dump_json()


Render = Callable[[Choice, RequestOutput], Iterable[str]]


async def stream_response(
    request: Request,
    run: Run,
    render: Render,
    *,
    head: Iterable[str] = (),
    tail: Callable[[], Iterable[str]] = lambda: (),
    done: bool = True,
) -> StreamingResponse:
    """Server-sent events of ``run``: the payloads of ``head``, ``render(choice, output)`` for
    each output, ``tail()``, then ``[DONE]`` if ``done``. Payloads are JSON strings.

    Waits for every prompt's first output before the response begins, so that errors the engine
    raises before yielding (prompt too long, ...) still get a JSON error with the right status.
    A client that hangs up meanwhile (before its prompt was even prefilled) aborts the run.
    """
    first: list[tuple[Choice, RequestOutput]] = []

    async def first_outputs() -> None:
        while not all(c.started for c in run.choices) and (item := await run.next()):
            first.append(item)

    try:
        started, _ = await unless_hung_up(request, first_outputs())
    except BaseException:
        run.close()
        raise
    if not started:
        run.close()
        return StreamingResponse(iter(()), media_type="text/event-stream")  # nobody listens

    async def events() -> AsyncIterator[str]:
        try:
            for payload in head:
                yield _event(payload)
            for choice, out in first:
                for payload in render(choice, out):
                    yield _event(payload)
            while (item := await run.next()) is not None:
                for payload in render(*item):
                    yield _event(payload)
            for payload in tail():
                yield _event(payload)
        except Exception as exc:
            yield _event(json.dumps(report(to_api_error(exc, request), request).body()))
        finally:
            run.close()
        if done:
            yield _event("[DONE]")

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        # Runs even when the client left before the stream started (the generator's own
        # finally would not run then).
        background=BackgroundTask(run.aclose),
    )


def _event(payload: str) -> str:
    return f"data: {payload}\n\n"
