"""Tokenizer work off the event loop: a bounded thread pool.

Tokenizing a 30 MB prompt took 49 s on the event loop, and ``/health`` and every other client
waited for it. Tokenizing, rendering chat templates and decoding echoed prompts run here
instead, on ``threads`` threads (fast tokenizers release the GIL), with at most ``max_pending``
jobs queued or running; one more is refused with a 429 (Retry-After: 1) rather than held.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request

from loraplex.engine import QueueFullError

T = TypeVar("T")
PENDING_PER_THREAD = 16


class TextPool:
    """``await pool.run(fn, *args)`` runs ``fn`` on one of ``threads`` worker threads."""

    def __init__(self, threads: int, max_pending: int | None = None) -> None:
        if threads <= 0:
            raise ValueError("threads must be positive")
        self.threads = threads
        self.max_pending = max_pending or threads * PENDING_PER_THREAD
        self.pending = 0
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="loraplex-text")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.pending >= self.max_pending:
            raise QueueFullError(
                f"The server is tokenizing {self.pending} prompts already; retry later.", 1
            )
        self.pending += 1  # only the event loop touches it
        try:
            job = functools.partial(fn, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._executor, job)
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def text_pool(request: Request) -> TextPool:
    """The app's pool (``create_app`` makes one from ``--tokenizer-threads``)."""
    return request.app.state.text_pool
