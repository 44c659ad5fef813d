"""uvicorn's h11 protocol with the guards a connection needs before any route runs.

* Deadlines: a request head must arrive within ``--header-timeout`` of its first byte (or of
  the connection); a body that no route reads gets the allowance of
  :func:`~loraplex.api.timeouts.body_allowance` (``--body-timeout`` plus its decoded bytes
  over ``--body-min-rate``, from the body's start) plus a grace, so the 408 of
  :class:`~loraplex.api.timeouts.BodyDeadline` comes first where a route reads. Past either,
  the connection is closed. uvicorn itself only times idle keep-alive connections.
* Bodies wait for the app: after a request head, parsing stops until the app's task has run
  its first step, in which :class:`~loraplex.api.key_gate.KeyGate` answers a request without
  a key; so no byte of an unauthenticated body is parsed, even one that came with the head.
* Chunks: :class:`~loraplex.api.chunk_guard.CountingConnection` counts a chunked body's chunks;
  past the allowance parsing stops mid-buffer and the client gets a 400 (OpenAI's shape),
  written here since the route, if it has started, is told the client left.
* Lingering: connections close through :class:`~loraplex.api.linger.LingeringTransport`, so a
  client still sending when it is answered early reads its answer instead of a reset.

``loraplex serve`` and :class:`~loraplex.api.threaded_server.ThreadedServer` pass
:func:`uvicorn_options` to uvicorn (so they always run h11, even where httptools is installed).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from loraplex.api.chunk_guard import CountingConnection, too_many_chunks
from loraplex.api.errors import APIError
from loraplex.api.linger import LINGER_IDLE_S, LingeringTransport
from loraplex.api.timeouts import BACKSTOP_GRACE_S, body_allowance
from loraplex.config import ServerConfig


def guarded_protocol(server: ServerConfig) -> type[H11Protocol]:
    """uvicorn's h11 protocol with deadlines, a chunk allowance and lingering closes; pass it
    as ``uvicorn.Config(http=...)``."""

    class GuardedH11Protocol(H11Protocol):
        conn: CountingConnection
        transport: LingeringTransport  # type: ignore[assignment]
        _timer: asyncio.TimerHandle | None = None
        _head_start = 0.0  # when the current head began to arrive (or the connection opened)
        _body_start = 0.0  # when its body began
        _served = False  # a request was served: an idle wait is uvicorn's keep-alive
        _releasing = False  # a held body's parsing is to resume at the next loop iteration

        def __init__(
            self,
            config: UvicornConfig,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            size = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
            self.conn = CountingConnection(h11.SERVER, size)

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(LingeringTransport(transport, self.loop, self._sending))
            self._head_start = self.loop.time()
            self._watch()

        def data_received(self, data: bytes) -> None:
            if self.transport.lingering:
                self.transport.discard(data)
                return
            self.transport.heard()
            before = self.conn.their_state
            if before is h11.IDLE and not self.conn.trailing_data[0] and self._served:
                self._head_start = self.loop.time()  # the first byte of a new head
            super().data_received(data)
            if before is h11.IDLE and self.conn.their_state is not h11.IDLE:
                self._body_start = self.loop.time()
            self._watch()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.refused and not self.transport.is_closing():
                self._refuse(too_many_chunks(self.conn))
            elif self.conn.held and not self._releasing:
                # The app's task, created for the head just parsed, runs first: the key gate
                # answers a request without a key before a byte of its body is parsed.
                self._releasing = True
                self.loop.call_soon(self._release)

        def _release(self) -> None:
            self._releasing = self.conn.held = False
            if not self.transport.is_closing():
                self.handle_events()

        def on_response_complete(self) -> None:
            self._served = True
            super().on_response_complete()
            self._watch()

        def shutdown(self) -> None:
            if self.transport.lingering:  # the server is stopping: it owes no more reading
                self.transport.close_now()
                return
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            self.transport.forget()
            super().connection_lost(exc)

        def _sending(self) -> bool:
            """The client is still sending a request body (and sent something lately)."""
            return (
                self.conn.their_state is h11.SEND_BODY and self.transport.quiet_s() < LINGER_IDLE_S
            )

        def _refuse(self, error: APIError) -> None:
            """Answer ``error`` in place of the route, whose client now seems gone, and close."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_started:
                cycle.disconnected = True  # its receive() says so; whatever it sends is dropped
                cycle.message_event.set()
            if self.conn.our_state is h11.SEND_RESPONSE:
                body = json.dumps(error.body()).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                reason = STATUS_PHRASES[error.status]
                head = h11.Response(status_code=error.status, headers=headers, reason=reason)
                for event in (head, h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event) or b"")
            self._cancel()
            self.transport.close()  # lingers: the rest of the body is read unparsed, dropped

        def _deadline(self) -> float | None:
            their = self.conn.their_state
            if their is h11.IDLE and (self.conn.trailing_data[0] or not self._served):
                return self._head_start + server.header_timeout
            if their is h11.SEND_BODY:
                allowance = body_allowance(server, self.conn.body_bytes) + BACKSTOP_GRACE_S
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
            if deadline is None or self.transport.is_closing():
                return
            if self.loop.time() < deadline:  # bytes arrived meanwhile and moved it on
                self._watch()
            else:
                self.transport.close_now()

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    return GuardedH11Protocol


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` keywords that apply these guards (``loraplex serve`` and the
    in-process :class:`~loraplex.api.threaded_server.ThreadedServer` use the same)."""
    return {"timeout_keep_alive": server.timeout_keep_alive, "http": guarded_protocol(server)}
