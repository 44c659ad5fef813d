"""RequestStream: the outputs of one request, in order, to one coroutine; cancel-safe reads,
one close (aborts what is unfinished, gives back the queue place), errors raised."""

from __future__ import annotations

import asyncio

import pytest

from loraplex.engine.request.outputs import RequestOutput
from loraplex.engine.request.stream import RequestStream


def output(index: int, finished: bool, error: Exception | None = None) -> RequestOutput:
    return RequestOutput(
        request_id="r",
        text=f"{index}",
        token_ids=(index,),
        finished=finished,
        finish_reason="stop" if finished else None,
        num_prompt_tokens=1,
        num_output_tokens=1,
        index=index,
        error=error,
    )


def stream(children: int, events: list) -> RequestStream:
    return RequestStream(
        "r",
        children,
        asyncio.get_running_loop(),
        on_start=lambda: events.append("start"),
        on_close=lambda queued, unfinished: events.append(("close", queued, unfinished)),
    )


def test_outputs_in_order_then_none_and_one_close() -> None:
    async def main() -> list:
        events: list = []
        s = stream(2, events)
        for item in (output(0, False), output(1, True), output(0, True)):
            s.put(item)
        got = [(o.index, o.finished) async for o in s]
        s.close()  # after the end: nothing more happens
        assert await s.next() is None
        return [got, events]

    got, events = asyncio.run(main())
    assert got == [(0, False), (1, True), (0, True)]
    assert events == ["start", ("close", False, False)]


def test_a_cancelled_read_loses_nothing_and_close_aborts_once() -> None:
    async def main() -> list:
        events: list = []
        s = stream(1, events)
        reader = asyncio.ensure_future(s.next())
        await asyncio.sleep(0)
        reader.cancel()  # a client that hung up while waiting
        with pytest.raises(asyncio.CancelledError):
            await reader
        s.put(output(0, False))
        first = await s.next()  # the output was not swallowed by the cancelled read
        s.close()
        s.close()
        return [first.index, events, await s.next()]

    index, events, after = asyncio.run(main())
    assert index == 0 and after is None
    assert events == ["start", ("close", False, True)]  # still running: aborted, once


def test_a_request_closed_before_its_first_output_leaves_the_queue() -> None:
    async def main() -> list:
        events: list = []
        stream(3, events).close()
        return events

    assert asyncio.run(main()) == [("close", True, True)]


def test_an_error_output_is_raised_and_closes_the_stream() -> None:
    async def main() -> list:
        events: list = []
        s = stream(2, events)
        s.put(output(0, True, error=ValueError("adapter gone")))
        with pytest.raises(ValueError, match="adapter gone"):
            await s.next()
        died = stream(1, events)
        died.put(RuntimeError("the engine thread died"))
        with pytest.raises(RuntimeError, match="died"):
            await died.next()
        return events

    assert asyncio.run(main()) == [("close", True, True), ("close", True, True)]
