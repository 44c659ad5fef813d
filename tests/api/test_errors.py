"""Every exception a route may raise maps to one status and the one OpenAI error body."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from loraplex.adapters.errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterPathError,
    AdapterValidationError,
)
from loraplex.api.errors import APIError, BodyTooLargeError, error_body, register_error_handlers
from loraplex.engine.request.params import ParameterError

INVALID = "invalid_request_error"


class Body(BaseModel):
    model: str
    temperature: float = 1.0


def _app() -> FastAPI:
    app = FastAPI()
    register_error_handlers(app)

    @app.get("/api-error")
    async def api_error() -> None:
        raise APIError(409, "conflict here", type="conflict_error", param="name", code="exists")

    @app.get("/parameter")
    async def parameter() -> None:
        raise ParameterError("temperature", "temperature must be in [0, 2]")

    @app.get("/adapter-missing")
    async def adapter_missing() -> None:
        raise AdapterNotFoundError("nope")

    @app.get("/adapter-invalid")
    async def adapter_invalid() -> None:
        raise AdapterValidationError("rank 128 exceeds --max-lora-rank 64")

    @app.get("/adapter-exists")
    async def adapter_exists() -> None:
        raise AdapterExistsError("adapter 'a' exists; pass replace=true")

    @app.get("/adapter-path")
    async def adapter_path() -> None:
        raise AdapterPathError("'/etc' is not under any --adapter-roots folder")

    @app.get("/too-large")
    async def too_large() -> None:
        raise BodyTooLargeError("the request body exceeds the limit of 10 bytes")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret /home/path and internals")

    @app.post("/body")
    async def body(payload: Body) -> dict[str, str]:
        return {"model": payload.model}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    # raise_server_exceptions=False: look at the 500 response the client gets, not the traceback.
    return TestClient(_app(), raise_server_exceptions=False)


def _error(message: str, type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def test_error_body_shape() -> None:
    assert error_body("m") == _error("m", "invalid_request_error", None, None)


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/api-error", 409, _error("conflict here", "conflict_error", "name", "exists")),
        (
            "/parameter",
            400,
            _error(
                "temperature must be in [0, 2]",
                "invalid_request_error",
                "temperature",
                "invalid_value",
            ),
        ),
        (
            "/adapter-missing",
            404,
            _error(
                "adapter 'nope' does not exist", "invalid_request_error", "model", "model_not_found"
            ),
        ),
        (
            "/adapter-invalid",
            400,
            _error(
                "rank 128 exceeds --max-lora-rank 64",
                "invalid_request_error",
                None,
                "invalid_adapter",
            ),
        ),
        (
            "/adapter-exists",
            409,
            _error(
                "adapter 'a' exists; pass replace=true",
                "invalid_request_error",
                "name",
                "adapter_exists",
            ),
        ),
        (
            "/adapter-path",
            403,
            _error(
                "'/etc' is not under any --adapter-roots folder",
                "permission_error",
                "path",
                "path_not_allowed",
            ),
        ),
        (
            "/too-large",
            413,
            _error(
                "the request body exceeds the limit of 10 bytes",
                "invalid_request_error",
                None,
                "request_too_large",
            ),
        ),
        (
            "/boom",
            500,
            _error("Internal server error", "server_error", None, "internal_error"),
        ),
        (
            "/no-such-route",
            404,
            _error("Invalid URL (GET /no-such-route)", "invalid_request_error", None, None),
        ),
    ],
)
def test_exception_maps_to_status_and_body(
    client: TestClient, path: str, status: int, body: dict
) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.json() == body


def test_too_large_closes_the_connection(client: TestClient) -> None:
    assert client.get("/too-large").headers["connection"] == "close"


def test_unhandled_error_does_not_leak_internals(client: TestClient) -> None:
    assert "secret" not in client.get("/boom").text


def test_method_not_allowed_keeps_allow_header(client: TestClient) -> None:
    response = client.post("/parameter")
    assert response.status_code == 405
    assert response.json() == _error("Method Not Allowed", "invalid_request_error", None, None)
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"temperature": 0.5}, "model"),  # missing
        ({"model": "m", "temperature": "hot"}, "temperature"),  # wrong type
        ({"model": 3}, "model"),
    ],
)
def test_request_validation_is_400_with_param(
    client: TestClient, payload: dict, param: str
) -> None:
    response = client.post("/body", json=payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")


def test_malformed_json_is_400_without_param(client: TestClient) -> None:
    response = client.post(
        "/body", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] is None


def test_api_error_headers_are_sent() -> None:
    app = FastAPI()
    register_error_handlers(app)

    @app.get("/auth")
    async def auth() -> None:
        raise APIError(
            401, "no key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )

    response = TestClient(app).get("/auth")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == _error("no key", "invalid_request_error", None, "invalid_api_key")


def test_every_failure_is_logged_once_with_its_reason(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="loraplex.api.errors")
    client.get("/adapter-missing")
    client.get("/boom")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if " failed: " in r.getMessage()]
    assert lines == [
        (logging.INFO, "GET /adapter-missing failed: 404 adapter 'nope' does not exist"),
        (logging.WARNING, "GET /boom failed: 500 Internal server error"),
    ]
