"""One error body for every failure, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

Routes raise exceptions (``APIError``, ``ParameterError``, adapter errors, ...) and never build
error responses themselves; :func:`register_error_handlers` maps each exception type to a status
and this shape in one place, so OpenAI clients raise the right typed exception for every error.

Every failure a client is told about passes :func:`report` once (the handlers, and a stream's
error event): one log line with its reason, and each 429 counted by tenant
(``loraplex_rate_limited_requests_total``), whichever part refused (queue caps, tokenizer pool).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraplex import metrics
from loraplex.adapters.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    AdapterQuotaError,
    AdapterRefusedError,
    AdapterValidationError,
)
from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.engine import (
    CapacityError,
    ConstraintError,
    ConstraintViolationError,
    EngineUnavailableError,
    NonFiniteOutputError,
    ParameterError,
    QueueFullError,
)

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
PERMISSION_ERROR = "permission_error"
SERVER_ERROR = "server_error"
RATE_LIMIT_ERROR = "rate_limit_error"


class BodyTooLargeError(Exception):
    """A request body, or one part of it, over its size cap (HTTP 413).

    Raised as soon as the cap is crossed, with the rest of the body unread, so the response also
    closes the connection: reading on would mean accepting whatever the client still sends.
    """


class APIError(Exception):
    """An error with a known HTTP status that the client should see as is."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers) if headers else None

    def body(self) -> dict[str, dict[str, Any]]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def encodable(text: str) -> str:
    """``text`` with any lone surrogate (valid JSON, not UTF-8) escaped as ``\\udXXX``, so an
    error that quotes client input can always be sent."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(
    message: str, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, Any]]:
    """The one error shape; also used for the ``data: {"error": ...}`` event of a broken stream."""
    return {"error": {"message": encodable(message), "type": type, "param": param, "code": code}}


def _type_for_status(status: int) -> str:
    return SERVER_ERROR if status >= 500 else INVALID_REQUEST


def _validation_param(loc: Sequence[Any]) -> str | None:
    """The top-level request field an error is about: ``("body", "temperature")`` -> temperature.

    Deeper parts of ``loc`` are pydantic's union-member tags or list indexes, which mean nothing
    to a client; OpenAI's ``param`` names the request field.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return str(parts[0]) if parts and isinstance(parts[0], str) else None


def to_api_error(exc: Exception, request: Request | None = None) -> APIError:
    """The status and body for any exception: the one mapping table, also used mid-stream."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):  # the openai client retries it after Retry-After
        headers = {"Retry-After": str(exc.retry_after)}
        code = "rate_limit_exceeded"
        return APIError(429, str(exc), RATE_LIMIT_ERROR, code=code, headers=headers)
    if isinstance(exc, EngineUnavailableError):
        return APIError(503, str(exc), SERVER_ERROR, code="service_unavailable")
    if isinstance(exc, NonFiniteOutputError):  # an adapter's overflow is the input's fault
        if exc.caused_by_input:
            return APIError(400, str(exc), param=exc.param, code="non_finite_output")
        log.error("non-finite output on the base model")
        return APIError(500, str(exc), SERVER_ERROR, code="non_finite_output")
    if isinstance(exc, CapacityError):  # a server-wide cap, named in the message
        return APIError(409, str(exc), param=exc.param, code="limit_reached")
    if isinstance(exc, ConstraintError):  # a schema/regex/grammar that cannot be compiled
        return APIError(400, str(exc), param=exc.param, code="invalid_constraint")
    if isinstance(exc, ConstraintViolationError):  # a grammar the vocabulary cannot write
        return APIError(400, str(exc), code="invalid_constraint")
    if isinstance(exc, ParameterError):
        return APIError(400, str(exc), param=exc.param, code="invalid_value")
    if isinstance(exc, AdapterNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, AdapterExistsError):
        return APIError(409, str(exc), param="name", code="adapter_exists")
    if isinstance(exc, AdapterQuotaError):
        return APIError(409, str(exc), param="name", code="quota_exceeded")
    if isinstance(exc, AdapterRefusedError):
        return APIError(400, str(exc), param="model", code="adapter_refused")
    if isinstance(exc, AdapterPathError):
        return APIError(403, str(exc), PERMISSION_ERROR, param="path", code="path_not_allowed")
    if isinstance(exc, AdapterError):  # AdapterValidationError and any other adapter problem
        return APIError(400, str(exc), code="invalid_adapter")
    if isinstance(exc, BodyTooLargeError):
        headers = {"Connection": "close"}
        return APIError(413, str(exc), param=None, code="request_too_large", headers=headers)
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = _validation_param(first.get("loc", ()))
        message = str(first.get("msg", "invalid request"))
        if param is not None:
            message = f"{param}: {message}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more errors)"
        return APIError(400, message, param=param, code="invalid_value")
    if isinstance(exc, StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and request is not None and message == "Not Found":
            message = f"Invalid URL ({request.method} {request.url.path})"
        status = exc.status_code
        return APIError(status, message, _type_for_status(status), headers=exc.headers)
    # The traceback goes to the log, never to the client: it may hold paths and internals.
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "Internal server error", SERVER_ERROR, code="internal_error")


def request_tenant(request: Request) -> str:
    """The tenant of the caller: the principal its key authenticated (``KeyGate`` leaves it in
    ``request.state`` before the body is read), else the one tenant of a server without keys."""
    principal = getattr(request.state, "principal", None)
    return getattr(principal, "tenant", None) or DEFAULT_TENANT


def report(error: APIError, request: Request) -> APIError:
    """Log a failed request with its reason (a server error as a warning) and count a 429
    under its tenant; call once per failure the client hears of. Returns ``error``."""
    if error.status == 429:
        metrics.record_rate_limited(request_tenant(request))
    level = logging.WARNING if error.status >= 500 else logging.INFO
    where = f"{request.method} {request.url.path}"
    log.log(level, "%s failed: %d %s", where, error.status, encodable(error.message))
    return error


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return report(to_api_error(exc, request), request).response()


def register_error_handlers(app: FastAPI) -> None:
    """Map every exception type a route may raise to a status code and the one error body."""
    # Exception (anything unmapped) is run by Starlette's outermost middleware, the rest by the
    # exception middleware; to_api_error decides the status and body for all of them.
    for exc_type in (
        APIError,
        ParameterError,
        CapacityError,
        AdapterError,
        AdapterNotFoundError,
        AdapterValidationError,
        BodyTooLargeError,
        QueueFullError,
        EngineUnavailableError,
        RequestValidationError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(exc_type, _handle)
