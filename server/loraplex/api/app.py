"""The FastAPI application factory; the engine's life is the app's lifespan."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from loraplex import metrics
from loraplex.api import openapi_limits
from loraplex.api.auth import KeyTable
from loraplex.api.body_limit import BodySizeLimit
from loraplex.api.errors import register_error_handlers
from loraplex.api.key_gate import KeyGate
from loraplex.api.lifecycle import ShutdownAnswer
from loraplex.api.routes import adapters, chat, completions, generate, health, models, ui
from loraplex.api.text_pool import TextPool
from loraplex.api.timeouts import BodyDeadline
from loraplex.config import Config
from loraplex.engine import AsyncEngine
from loraplex.metrics.labels import PrivateLabels, label_secret


def _version() -> str:
    try:
        return importlib.metadata.version("loraplex")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


def create_app(config: Config, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the app for ``config``.

    The lifespan builds the engine with ``AsyncEngine.from_config(config)`` (unless ``engine`` is
    given, e.g. by a test), starts its thread, stores it in ``app.state.engine`` and shuts it
    down when the server stops. Nothing is loaded before the server starts, so building an app
    is cheap.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading weights takes seconds to minutes; in a thread, the loop stays responsive.
        eng = (
            engine
            if engine is not None
            else await asyncio.to_thread(AsyncEngine.from_config, config)
        )
        eng.start()
        app.state.engine = eng
        app.state.text_pool = TextPool(config.server.tokenizer_threads)
        # Replicas sharing one store: adopt what the others upload, replace and delete.
        poll = config.lora.store_poll_s
        watch = asyncio.create_task(eng.adapters.watch_store(poll)) if poll > 0 else None
        try:
            yield
        finally:
            if watch is not None:
                watch.cancel()
            eng.shutdown()
            app.state.text_pool.shutdown()

    app = FastAPI(
        title="loraplex",
        version=_version(),
        description="Multi-adapter LoRA inference server (OpenAI-compatible).",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.keys = KeyTable.from_config(config.server)  # api/auth.py: keys -> principals
    # What a scrape without a key sees of tenants and their adapters (metrics/labels.py).
    digests = [entry.sha256 for entry in config.server.key_entries]
    app.state.private_labels = PrivateLabels(label_secret(digests))
    metrics.ADAPTER_LABELS.set_limit(config.server.metrics_adapter_labels)
    app.add_middleware(BodyDeadline, server=config.server)  # slow bodies: a 408
    app.add_middleware(BodySizeLimit, max_bytes=config.server.max_request_mb << 20)  # a 413
    routers = [module.router for module in (models, completions, chat, generate, adapters, health)]
    app.add_middleware(KeyGate, routers=routers, keys=app.state.keys)  # a 401 before the body
    app.add_middleware(ShutdownAnswer)  # cut short by the server's shutdown: a 503, not a 500
    register_error_handlers(app)
    for router in routers:
        app.include_router(router)
    if config.server.ui:  # the playground page at / (--no-ui: the API alone; no key needed)
        app.include_router(ui.build_router())
    openapi_limits.install(app)  # the model's vocabulary and context, once it is loaded
    return app
