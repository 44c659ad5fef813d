"""Closing a connection whose client is still sending, without losing the answer (lingering).

A server that answers early (a 413 for a body over the cap, a 401 from the headers, a 400 for
too many chunks) and then closes its socket with unread bytes in it makes the kernel send a
reset instead of a FIN. A client that sends its whole body before reading the answer (Python's
``http.client``, hence ``urllib`` and ``requests``) then fails with ``ConnectionResetError`` or
``BrokenPipeError`` and never sees the status; on some systems a reset also drops the answer
already received. As Apache and nginx do, :class:`LingeringTransport` instead half-closes (the
answer, then a FIN), then reads and drops what the client still sends, unparsed, until the
client closes, or :data:`LINGER_BYTES` more arrived, or it went :data:`LINGER_IDLE_S` without
sending, or :data:`LINGER_S` passed; only then does it close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

LINGER_BYTES = 64 << 20  # read and dropped at most (a body 4x --max-request-mb still hears)
LINGER_S = 5.0  # at most this long in all (nginx: 30 s in all, 5 s between reads)
LINGER_IDLE_S = 0.5  # a client quiet this long is not sending a body: close


class LingeringTransport:
    """A proxy of uvicorn's transport whose :meth:`close` lingers while ``sending()`` says the
    client is still sending its request body; everything else goes to the real transport.

    The protocol passes what arrives while :attr:`lingering` to :meth:`discard` and tells
    :meth:`heard` of every other arrival (the idle clock). ``is_closing()`` is true from the
    start of lingering, so uvicorn treats the connection as closed.
    """

    def __init__(
        self, real: Any, loop: asyncio.AbstractEventLoop, sending: Callable[[], bool]
    ) -> None:
        self.real = real
        self.lingering = False
        self._loop = loop
        self._sending = sending
        self._last = loop.time()
        self._end = 0.0
        self._left = 0
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def is_closing(self) -> bool:
        return self.lingering or self.real.is_closing()

    def heard(self) -> None:
        self._last = self._loop.time()

    def quiet_s(self) -> float:
        """Seconds since the client last sent anything."""
        return self._loop.time() - self._last

    def close(self) -> None:
        if self.is_closing():
            return
        if not (self._sending() and self.real.can_write_eof()):
            self.real.close()
            return
        try:
            self.real.write_eof()  # sent once the answer buffered before it is
        except OSError:  # the client is gone already
            self.real.close()
            return
        self.lingering = True
        self._left, self._end = LINGER_BYTES, self._loop.time() + LINGER_S
        self.real.resume_reading()  # uvicorn may have paused it (its buffer was full)
        self._arm()

    def close_now(self) -> None:
        """Close without lingering (a client past its deadline is not owed one)."""
        self._cancel()
        self.real.close()

    def discard(self, data: bytes) -> None:
        self._left -= len(data)
        self.heard()
        if self._left < 0:
            self.close_now()

    def _arm(self) -> None:
        self._cancel()
        self._timer = self._loop.call_at(min(self._end, self._last + LINGER_IDLE_S), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        if now >= self._end or now >= self._last + LINGER_IDLE_S:
            self.real.close()
        elif not self.real.is_closing():
            self._arm()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def forget(self) -> None:
        """The connection is gone: stop the timer."""
        self._cancel()
