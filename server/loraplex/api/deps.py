"""FastAPI dependencies as ``Annotated`` aliases: routes declare ``engine: EngineDep`` and never
reach into ``app.state`` themselves."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from loraplex.adapters.rules import Limits
from loraplex.api.errors import APIError
from loraplex.config import Config
from loraplex.engine.async_engine import AsyncEngine


def get_engine(request: Request) -> AsyncEngine:
    """The engine the lifespan started (``app.state.engine``)."""
    return request.app.state.engine


def get_config(request: Request) -> Config:
    """The frozen config the app was built with (``app.state.config``)."""
    return request.app.state.config


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
ConfigDep = Annotated[Config, Depends(get_config)]


def get_limits(engine: EngineDep) -> Limits:
    """The adapter limits the engine validates with; uploads are capped by the same values."""
    return engine.adapters.limits


LimitsDep = Annotated[Limits, Depends(get_limits)]


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def require_api_key(request: Request, config: ConfigDep) -> None:
    """With ``--api-key``, reject calls without ``Authorization: Bearer <key>`` (401).

    Attached to the ``/v1`` routers only: health checks and metric scrapes stay open.
    """
    expected = config.server.api_key
    if expected is None:
        return
    token = _bearer_token(request)
    # compare_digest: the time taken must not reveal how much of the key was right.
    if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(
            401,
            "Invalid or missing API key; send 'Authorization: Bearer <key>'.",
            param=None,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


AuthDep = Depends(require_api_key)
