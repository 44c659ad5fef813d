"""A bound on what a chunked request body may cost per byte: its number of chunks.

h11 parses a ``Transfer-Encoding: chunked`` body one chunk at a time in Python, about 4 µs a
chunk, on the event loop. One socket sending ``1\\r\\na\\r\\n`` as fast as it could (one byte of
body per six on the wire) kept the loop busy: ``/health`` took 1-10 s and another tenant's
completion 84 ms -> 23 s, for as long as the body lasted (its 16 MiB took ~110 s, well above
``--body-min-rate``). So a body may have at most

    ``chunk_allowance(n) = FREE_CHUNKS + n // BYTES_PER_CHUNK``

chunks once ``n`` bytes of it are in: any client may send a thousand small chunks, and past
them chunks must average ``BYTES_PER_CHUNK`` bytes, which bounds the parsing cost of a body to
~4 µs per 256 bytes (16 ms per MiB, as much as parsing the JSON in it), not per byte. Clients
stream far larger chunks (httpx and requests send each piece given, curl 64 KiB). Past the
allowance nothing more is parsed: a 400 in the OpenAI shape and the connection closes
(:mod:`loraplex.api.http_protocol`).
"""

from __future__ import annotations

import h11

from loraplex.api.errors import APIError

FREE_CHUNKS = 1024
BYTES_PER_CHUNK = 256


def chunk_allowance(body_bytes: int) -> int:
    """How many chunks a body may have used once ``body_bytes`` bytes of it arrived."""
    return FREE_CHUNKS + body_bytes // BYTES_PER_CHUNK


class CountingConnection(h11.Connection):
    """h11's connection, counting the current request body's decoded bytes and its chunks.

    ``h11.PAUSED`` (which makes uvicorn stop parsing and pause reading, mid-buffer) is what
    :meth:`next_event` returns while ``held`` (set by a request head with a body to come: the
    protocol lets the app look at the head, and check its key, before any body is parsed,
    then clears it) or ``refused`` (set when the chunks outrun :func:`chunk_allowance`; the
    protocol answers with :func:`too_many_chunks`).
    """

    body_bytes = 0  # decoded bytes of the current request's body
    chunks = 0  # its chunks begun
    held = False
    refused = False

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.refused or self.held:
            return h11.PAUSED
        event = super().next_event()
        if type(event) is h11.Request:
            self.held = self.their_state is h11.SEND_BODY
        elif type(event) is h11.Data:
            self.body_bytes += len(event.data)
            if event.chunk_start:
                self.chunks += 1
                if self.chunks > chunk_allowance(self.body_bytes):
                    self.refused = True
                    return h11.PAUSED
        return event

    def start_next_cycle(self) -> None:
        super().start_next_cycle()
        self.body_bytes = self.chunks = 0


def too_many_chunks(conn: CountingConnection) -> APIError:
    """The 400 for a body whose chunks outran the allowance."""
    message = (
        f"The chunked request body used {conn.chunks} chunks for {conn.body_bytes} bytes; "
        f"past the first {FREE_CHUNKS} chunks, chunks must average at least {BYTES_PER_CHUNK} "
        "bytes. Send larger chunks, or a Content-Length."
    )
    return APIError(400, message, code="too_many_chunks", headers={"Connection": "close"})
