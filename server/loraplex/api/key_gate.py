"""The API key is checked from the request's headers, before any of its body is read.

FastAPI reads and parses a JSON body before it solves a route's dependencies, so a 15 MB body
sent without a key was parsed (and its cost paid by every other client of the event loop)
before the 401. :class:`KeyGate` runs first: for a route that authenticates (whose dependencies
include :func:`~loraplex.api.auth.authenticate`), a request without a known key gets the 401 at
once, from its headers, with ``Connection: close`` when a body was announced, and its body is
never parsed (what of it is still sent is read and dropped unparsed, see
:mod:`loraplex.api.linger`). A known key's principal is left in ``request.state`` for the
route's own dependency. ``/health``, ``/ready``, ``/metrics`` and unknown paths pass as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from loraplex.api.auth import KeyTable, authenticate, caller
from loraplex.api.errors import APIError


def _authenticates(dependant: Dependant) -> bool:
    return any(d.call is authenticate or _authenticates(d) for d in dependant.dependencies)


class KeyGate:
    """ASGI middleware: 401 from the headers on every route of ``routers`` that authenticates
    (the routers the app includes; their routes carry their prefix and their dependencies)."""

    def __init__(self, app: object, routers: Sequence[APIRouter], keys: KeyTable) -> None:
        self.app = app
        self.keys = keys
        self.guarded = [
            route
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute) and _authenticates(route.dependant)
        ]
        # A path can match a route only if it starts with the route's text up to its first
        # parameter: one C-level test turns away /health and its like without a regex.
        self.prefixes = tuple(route.path.partition("{")[0] for route in self.guarded)

    def guards(self, scope: Scope) -> bool:
        """Whether a route that authenticates answers this path (with any method)."""
        if not scope["path"].startswith(self.prefixes):
            return False
        return any(route.matches(scope)[0] is not Match.NONE for route in self.guarded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] != "http" or not self.keys or not self.guards(scope):
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        headers = Headers(scope=scope)
        try:
            principal = caller(self.keys, headers)
        except APIError as refused:
            if "content-length" in headers or "transfer-encoding" in headers:
                refused.headers = {**(refused.headers or {}), "Connection": "close"}
            await refused.response()(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)  # type: ignore[operator]
