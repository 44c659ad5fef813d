"""A real engine whose steps a test can slow down or make fail, for the tests of load,
backpressure, faults and metrics while requests wait (the servers run it in-process)."""

from __future__ import annotations

import time

from loraplex.config import Config
from loraplex.engine.async_engine import AsyncEngine

FAILURE = "injected failure in /secret/path"  # the path must never reach a client


def controlled_engine(config: Config, delay: float = 0.0) -> tuple[AsyncEngine, dict]:
    """The engine for ``config`` and its knobs: ``knobs["delay"]`` seconds of sleep before
    every step, and every step raises :data:`FAILURE` while ``knobs["fail"]`` is true."""
    engine = AsyncEngine.from_config(config)
    knobs: dict = {"delay": delay, "fail": False}
    step = engine.engine.step

    def controlled_step():  # runs in the engine thread
        time.sleep(knobs["delay"])
        if knobs["fail"]:
            raise RuntimeError(FAILURE)
        return step()

    engine.engine.step = controlled_step
    return engine, knobs
