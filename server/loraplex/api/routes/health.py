"""Operational endpoints: ``GET /health`` (liveness) and ``GET /ready`` (readiness), open
without an API key, and ``GET /metrics``, whose view depends on the key (``api/auth.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from loraplex.api.auth import full_metrics
from loraplex.api.deps import EngineDep
from loraplex.api.schemas import HealthResponse
from loraplex.metrics import scrape as metrics_scrape

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(engine: EngineDep) -> JSONResponse:
    """Liveness: 200 while the engine thread is alive and coming round its loop (stepping when
    it has work), 503 once it died or hangs: restart the process."""
    if engine.is_healthy():
        return JSONResponse(HealthResponse(status="ok").model_dump())
    return JSONResponse(HealthResponse(status="unhealthy").model_dump(), status_code=503)


@router.get("/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def ready(engine: EngineDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and the engine runs, 503 while it drains for
    shutdown (after SIGTERM) or is dead: send this replica no new requests."""
    if engine.is_ready():
        return JSONResponse(HealthResponse(status="ok").model_dump())
    status = "draining" if engine.draining else "unhealthy"
    return JSONResponse(HealthResponse(status=status).model_dump(), status_code=503)


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(request: Request, engine: EngineDep) -> Response:
    """Prometheus text format (loraplex's metrics and the gateway's ``vllm:*``); the engine's
    gauges are refreshed from ``engine.stats()`` on each scrape. With API keys configured, a
    scrape without a key sees tenants and their adapters as opaque labels (public adapters keep
    their names, which the gateway's endpoint picker matches); a ``metrics`` or ``admin`` key
    sees every name."""
    server = request.app.state.config.server
    full = full_metrics(request, server.metrics_require_key)
    private = None if full else request.app.state.private_labels
    body, content_type = metrics_scrape.scrape(engine.stats(), private)
    return Response(content=body, media_type=content_type)
