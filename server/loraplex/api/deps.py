"""FastAPI dependencies as ``Annotated`` aliases: routes declare ``engine: EngineDep`` and never
reach into ``app.state`` themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loraplex.adapters.rules import Limits
from loraplex.api.auth import authenticate
from loraplex.engine import AsyncEngine


def get_engine(request: Request) -> AsyncEngine:
    """The engine the lifespan started (``app.state.engine``)."""
    return request.app.state.engine


EngineDep = Annotated[AsyncEngine, Depends(get_engine)]


def get_limits(engine: EngineDep) -> Limits:
    """The adapter limits the engine validates with; uploads are capped by the same values."""
    return engine.adapters.limits


LimitsDep = Annotated[Limits, Depends(get_limits)]


# Every /v1 router and /generate carry it: 401 without a known key once keys are configured.
# Routes that need the caller declare ``principal: PrincipalDep`` (the same dependency, solved
# once per request); what a role may do is in api/auth.py.
AuthDep = Depends(authenticate)
