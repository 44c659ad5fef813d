"""Graceful shutdown for ``loraplex serve``: SIGTERM/SIGINT drain first, then exit 0.

uvicorn, on SIGTERM, stops listening at once (new clients get a refused connection) and
re-raises the signal when done (exit status -15). :class:`DrainingServer` instead, on the first
signal: ``/ready`` turns 503 and new generation requests get a 503 in the OpenAI shape
(``AsyncEngine.drain``), running requests get ``--shutdown-timeout`` seconds to finish (past it
they end with a 503 / an error event), and only then does uvicorn shut down, without
re-raising, so the process exits 0. A second signal stops at once, as uvicorn's would.

uvicorn then gives connections ``CLOSE_CONNECTIONS_S`` to finish and cancels the requests still
running (an upload still arriving, say), answering those that had not responded with a bare
text 500; :class:`ShutdownAnswer` answers them with a 503 in the OpenAI shape instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.api.errors import SERVER_ERROR, APIError

log = logging.getLogger(__name__)
CLOSE_CONNECTIONS_S = 5.0  # after the drain, responses still being written get this long


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between the signal and the shutdown."""

    def __init__(self, config: uvicorn.Config, app: Any, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        engine = getattr(self.app.state, "engine", None)
        if self._drain_task is not None or engine is None or self._loop is None:
            self.should_exit = True  # a second signal, or nothing started yet: stop now
            self.force_exit = self._drain_task is not None
            return
        log.info("signal %d: draining (--shutdown-timeout %g s)", sig, self.shutdown_timeout)
        self._loop.call_soon_threadsafe(self._start_drain, engine)

    def _start_drain(self, engine: Any) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(engine))

    async def _drain(self, engine: Any) -> None:
        try:
            aborted = await engine.drain(self.shutdown_timeout)
            if aborted:
                log.warning("shutdown: %d requests aborted after --shutdown-timeout", aborted)
        finally:
            self.should_exit = True


STARTUP_FAILURE = 3  # uvicorn's exit status when the app fails to start


def serve_until_signalled(app: Any, shutdown_timeout: float, **uvicorn_config: Any) -> None:
    """Run ``app`` under :class:`DrainingServer` in the foreground until a signal drains it.

    A start that fails (the lifespan raised, e.g. a model the engine cannot run: the log names
    the feature and the model) exits with status 3, as ``uvicorn`` does, never 0."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=CLOSE_CONNECTIONS_S, **uvicorn_config)
    server = DrainingServer(config, app, shutdown_timeout)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


class ShutdownAnswer:
    """ASGI middleware: a request cancelled before it responded (uvicorn cancels what still
    runs when its shutdown grace ends) gets a 503 ``service_unavailable``, then the
    cancellation goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if not started:
                message = "The server is shutting down; retry the request on another replica."
                code, headers = "service_unavailable", {"Connection": "close"}
                error = APIError(503, message, SERVER_ERROR, code=code, headers=headers)
                await error.response()(scope, receive, send)
            raise
