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
* the transport-level deadlines of :mod:`loraplex.api.http_protocol` (uvicorn's h11
  protocol): a request head must arrive within ``header_timeout`` of its first byte (or of
  the connection), and a body that no route reads gets the same allowance as above plus
  :data:`BACKSTOP_GRACE_S` (so the 408 of the middleware comes first where a route reads);
  past it the connection is closed.

The allowance counts decoded body bytes from the body's start, so ``received / (now - start)``
must stay above ``body_min_rate`` once ``body_timeout`` has passed; what a body costs per chunk
is bounded apart from it (:mod:`loraplex.api.chunk_guard`).
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
