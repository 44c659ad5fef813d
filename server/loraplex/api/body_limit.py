"""A cap on request bodies, checked while they stream in (``--max-request-mb``).

One 200 MB JSON body to ``/v1/completions`` grew the process to 23.6 GB (the body, then its
parsed form, then the prompt's tokens) before the kernel killed it. This ASGI middleware
answers 413 in the OpenAI error shape, with ``Connection: close``, before anything is parsed:
at once when ``Content-Length`` says the body is too large, else as soon as the bytes received
cross the cap (the rest is never read). Adapter uploads have their own cap and streaming
reader (``api/upload.py``, ``--max-upload-mb``) and are left to it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.api.errors import BodyTooLargeError, report, to_api_error

UPLOAD_ROUTES = frozenset({("POST", "/v1/adapters")})  # capped by api/upload.py instead


class StreamedBodyTooLargeError(BodyTooLargeError, HTTPException):
    """Raised from ``receive`` inside a route; an HTTPException, so FastAPI's body reader lets
    it through (it turns other errors into a 400), and a BodyTooLargeError for its 413."""

    def __init__(self, message: str) -> None:
        BodyTooLargeError.__init__(self, message)
        HTTPException.__init__(self, 413, message, headers={"Connection": "close"})


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` (except on :data:`UPLOAD_ROUTES`)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        mib = self.max_bytes / (1 << 20)
        return f"The request body exceeds the limit of {mib:g} MiB (--max-request-mb)."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in UPLOAD_ROUTES:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = to_api_error(BodyTooLargeError(self._message()))
            response = report(error, Request(scope)).response()
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StreamedBodyTooLargeError(self._message())
            return message

        await self.app(scope, counted_receive, send)
