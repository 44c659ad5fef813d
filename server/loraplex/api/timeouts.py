"""Deadlines for clients that never finish sending: slow or stalled heads and bodies.

uvicorn closes a connection that stays idle ``timeout_keep_alive`` seconds *after* a response,
but has no deadline for a request that is still arriving: a socket that sends half a head (or
nothing) and a body that stalls were kept forever, each holding a file descriptor (an upload
also a temporary folder). Two layers, from ``--header-timeout``, ``--body-timeout`` and
``--body-min-rate``:

* :class:`BodyDeadline`, ASGI middleware: while a route reads a body, it must arrive by
  ``start + body_timeout + received / body_min_rate`` (so a large upload may take as long as
  it needs at the minimum rate). Past it, a 408 in the OpenAI error shape with
  ``Connection: close``; an upload's temporary folder is removed as on any other error.
* :func:`deadline_protocol`, uvicorn's h11 protocol with a transport-level deadline: a request
  head must arrive within ``header_timeout`` of its first byte (or of the connection), and a
  body that no route reads gets the same allowance as above plus a grace (so the 408 of the
  middleware comes first where a route reads); past it the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from loraplex.config import ServerConfig

BACKSTOP_GRACE_S = 5.0  # the transport deadline trails the middleware's by this much


class BodyTimeoutError(HTTPException):
    """The request body did not arrive in time (HTTP 408; the connection is closed)."""

    def __init__(self, detail: str) -> None:
        super().__init__(408, detail, headers={"Connection": "close"})


def body_allowance(server: ServerConfig, received: int) -> float:
    """Seconds a body may take once ``received`` bytes of it have arrived."""
    rate = server.body_min_rate
    return server.body_timeout + (received / rate if rate else 0.0)


class BodyDeadline:
    """Wraps ``receive`` so that a body arriving too slowly raises :class:`BodyTimeoutError`
    inside the route that reads it (FastAPI and the upload reader let HTTP errors through)."""

    def __init__(self, app: ASGIApp, server: ServerConfig) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        start, received, done = loop.time(), 0, False

        async def timed_receive() -> Message:
            nonlocal received, done
            if done:  # the body is in: what follows is waiting for a disconnect, not a body
                return await receive()
            remaining = start + body_allowance(self.server, received) - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except TimeoutError:
                raise BodyTimeoutError(
                    f"the request body did not arrive in time ({received} bytes received; "
                    f"--body-timeout {self.server.body_timeout:g} s, then at least "
                    f"--body-min-rate {self.server.body_min_rate} bytes/s)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        await self.app(scope, timed_receive, send)


def deadline_protocol(server: ServerConfig) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head (or unread body) does
    not arrive in time; pass it as ``uvicorn.Config(http=...)``."""

    class DeadlineH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _head_start = 0.0  # when the current head began to arrive (or the connection opened)
        _body_start = 0.0  # when its body began
        _body_bytes = 0
        _served = False  # a request was served: an idle wait is uvicorn's keep-alive

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_start = self.loop.time()
            self._watch()

        def data_received(self, data: bytes) -> None:
            before = self.conn.their_state
            if before is h11.IDLE and not self.conn.trailing_data[0] and self._served:
                self._head_start = self.loop.time()  # the first byte of a new head
            super().data_received(data)
            after = self.conn.their_state
            if before is h11.IDLE and after is not h11.IDLE:
                self._body_start, self._body_bytes = self.loop.time(), 0
            elif before is h11.SEND_BODY:
                self._body_bytes += len(data)
            self._watch()

        def on_response_complete(self) -> None:
            self._served = True
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _deadline(self) -> float | None:
            their = self.conn.their_state
            if their is h11.IDLE and (self.conn.trailing_data[0] or not self._served):
                return self._head_start + server.header_timeout
            if their is h11.SEND_BODY:
                allowance = body_allowance(server, self._body_bytes) + BACKSTOP_GRACE_S
                return self._body_start + allowance
            return None  # waiting for the app, or idle between requests (keep-alive timer)

        def _watch(self) -> None:
            self._cancel()
            deadline = self._deadline()
            if deadline is not None and not self.transport.is_closing():
                self._timer = self.loop.call_at(deadline, self._expire)

        def _expire(self) -> None:
            self._timer = None
            deadline = self._deadline()
            if deadline is None:
                return
            if self.loop.time() < deadline:  # bytes arrived meanwhile and moved it on
                self._watch()
            elif not self.transport.is_closing():
                self.transport.close()

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    return DeadlineH11Protocol


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that apply these deadlines (``loraplex serve`` and the
    in-process :class:`~loraplex.api.threaded_server.ThreadedServer` use the same)."""
    return {"timeout_keep_alive": server.timeout_keep_alive, "http": deadline_protocol(server)}
