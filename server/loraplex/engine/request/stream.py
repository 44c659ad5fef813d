"""One submitted request's outputs, carried from the engine thread to the coroutine that reads
them (``AsyncEngine.submit`` returns it).

Cancel-safe: a reader cancelled in :meth:`RequestStream.next` loses no output (asyncio's queue
gives it to the next reader), and :meth:`RequestStream.close`, idempotent, is the one way a
stream ends early: it aborts the children still running and gives back the request's place
under the queue limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loraplex.engine.request.outputs import RequestOutput


class RequestStream:
    """The output deltas of one request's ``children`` (``index`` tells which), in order.

    ``on_start()`` runs at the first output (the request stopped waiting in the queue);
    ``on_close(queued, unfinished)`` once, when the stream ends: every child finished, an
    error was raised, or :meth:`close`.
    """

    def __init__(
        self,
        request_id: str,
        children: int,
        loop: asyncio.AbstractEventLoop,
        on_start: Callable[[], None],
        on_close: Callable[[bool, bool], None],
    ) -> None:
        self.request_id = request_id
        self.loop = loop
        # An Exception: the engine thread died (every open stream gets one).
        self._queue: asyncio.Queue[RequestOutput | Exception] = asyncio.Queue()
        self._unfinished = children
        self._queued = True  # no output yet
        self._closed = False
        self._on_start = on_start
        self._on_close = on_close

    def put(self, item: RequestOutput | Exception) -> None:
        """From any thread (the engine thread: its death)."""
        self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def put_nowait(self, item: RequestOutput) -> None:
        """From the event loop (the engine thread hands over a step's outputs in one batch)."""
        self._queue.put_nowait(item)

    async def next(self) -> RequestOutput | None:
        """The next output of any child; None once all finished (or after :meth:`close`). An
        output that carries an error, or the engine's death, is raised (the stream closes)."""
        if self._closed or not self._unfinished:
            return None
        item = await self._queue.get()
        if isinstance(item, Exception) or item.error is not None:
            self.close()
            raise item if isinstance(item, Exception) else item.error
        if self._queued:
            self._queued = False
            self._on_start()
        self._unfinished -= item.finished
        if not self._unfinished:
            self.close()
        return item

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """End the stream (event loop): unfinished children are aborted."""
        if not self._closed:
            self._closed = True
            self._on_close(self._queued, self._unfinished > 0)
