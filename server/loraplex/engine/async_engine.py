"""The engine's thread bridged to asyncio: the event loop never runs model work.

Commands (add, drop, abort, call) go to the engine's thread (``loop.py``) through one queue;
each request's outputs come back through its own :class:`RequestStream`. That is all this
module does: requests are built and checked by :meth:`LLMEngine.prepare`, adapters are managed
by :class:`AdapterService`.

Its life: requests count against the :class:`QueueLimits` until they start (429 when the queue
is full); :meth:`drain` stops taking requests (503) and gives running ones a deadline; a fault
that kills the engine thread fails every open stream, and :meth:`is_healthy` turns False once
the thread is dead or has not come round its loop for ``STALL_S``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.config import Config
from loraplex.engine.adapter_tiers.service import AdapterService
from loraplex.engine.adapter_tiers.tiers import AdapterSpec
from loraplex.engine.build import build_engine, freeze_startup_objects
from loraplex.engine.constraints import GrammarService
from loraplex.engine.errors import EngineUnavailableError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.loop import EngineLoop
from loraplex.engine.output.state import ParentRequest
from loraplex.engine.queue_limits import QueueLimits
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.stream import RequestStream

log = logging.getLogger(__name__)
T = TypeVar("T")
STALL_S = 60.0  # a loop iteration (one step, or an idle wait) longer than this is a hang


class AsyncEngine:
    """Thread-owned :class:`LLMEngine`; ``adapters`` is the adapter service for the API,
    ``intake`` the request checks it may run on the event loop (host-side)."""

    def __init__(self, engine: LLMEngine, commands: queue.SimpleQueue[tuple] | None = None) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.vocab_size
        self.eos_token_ids = engine.eos_token_ids
        self.intake = engine.intake  # host-side: safe from the event loop
        self.base_format = engine.runner.base_format  # what adapters are checked against
        self.created = int(time.time())
        self.adapters = AdapterService(engine.tiers, self.on_engine)
        # Constraints compile here, in its worker pool: never on the engine thread.
        self.grammars = GrammarService(
            engine.tokenizer, engine.vocab_size, engine.eos_token_ids, engine.config.structured
        )
        self._commands: queue.SimpleQueue[tuple] = commands or queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}
        self.engine_loop = EngineLoop(engine, self._commands, self._streams)  # the engine's thread
        sched = engine.config.scheduler
        self.queue_limits = QueueLimits(
            sched.max_queued_requests, sched.max_queued_requests_per_tenant
        )
        self.draining = False  # set by drain(): new requests get 503
        self.stall_s = STALL_S

    @classmethod
    def from_config(cls, config: Config) -> AsyncEngine:
        commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        engine = build_engine(config, on_adapter_loaded=lambda: commands.put(("wake",)))
        freeze_startup_objects()
        return cls(engine, commands)

    async def on_engine(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread between two steps (it owns slots and weights)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._commands.put(("call", fn, future))
        return await future

    def start(self) -> None:
        self.engine_loop.start()

    def shutdown(self) -> None:
        self.engine_loop.stop()
        self.grammars.close()
        self.engine.registry.close()  # stop the adapter loader threads

    def is_healthy(self) -> bool:
        """Liveness: the engine thread runs and came round its loop within ``stall_s``
        (``STALL_S``; an idle loop comes round every half second)."""
        return (
            self.engine_loop.alive and time.monotonic() - self.engine_loop.heartbeat < self.stall_s
        )

    def is_ready(self) -> bool:
        """Readiness: alive and not draining (a load balancer sends nothing new)."""
        return self.is_healthy() and not self.draining

    @property
    def num_in_flight(self) -> int:
        """Engine requests with an open output stream (queued or running)."""
        return len(self._streams)

    async def drain(self, timeout: float) -> int:
        """Refuse new requests (503); wait up to ``timeout`` s for the open ones, then abort
        what is left with a 503 (an error event on a stream). Returns how many were aborted."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._streams and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = list(self._streams)
        error = EngineUnavailableError(
            f"The server shut down before the request finished (--shutdown-timeout {timeout:g} s)."
        )
        for request_id in left:
            self._commands.put(("abort", request_id, error))
        while self._streams and self.is_healthy():  # the aborts reach their clients
            await asyncio.sleep(0.01)
        return len(left)

    def check_queue(self, tenant: str = DEFAULT_TENANT) -> None:
        """Raise what :meth:`submit` would refuse with (503, 429) before any work is done."""
        self._refuse_if_unavailable()
        self.queue_limits.check(tenant)

    def _refuse_if_unavailable(self) -> None:
        if self.draining:
            raise EngineUnavailableError("The server is shutting down; retry on another replica.")
        if not self.is_healthy():
            raise EngineUnavailableError("The engine is not running; see the server log.")

    def stats(self) -> dict[str, object]:
        return self.engine.stats()

    async def submit(
        self,
        request_id: str,
        prompts: list[list[int]],
        params: SamplingParams,
        adapter: AdapterSpec = None,
        *,
        n: int = 1,
        cache_salt: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> RequestStream:
        """Check, build and queue one request: ``n`` samples of each prompt. Its outputs come
        through the returned stream (``close()`` aborts what is left). Refusals are raised here,
        before any byte is sent: 503 (draining, no engine), ``QueueFullError`` (429, the
        tenant's share of the queue is full), a bad prompt (400), an unknown adapter (404).

        ``adapter``: a card or name, a weighted mix ``[(adapter, weight), ...]`` or None (base
        model). ``cache_salt``: only the same salt shares prefix blocks; ``tenant``: whose
        queue share it takes.
        """
        self._refuse_if_unavailable()
        # Compiled before it is queued (a refused grammar is a 400 that takes no queue place).
        grammar = None
        if params.constraint is not None:
            grammar = await self.grammars.compile(params.constraint)
        self.queue_limits.enqueue(tenant)  # queued until its first output
        try:
            # Checked and resolved once, off the event loop (a mix is combined here); the
            # adapter version it resolves is held, so a caller that leaves drops it.
            parent = await self._prepare(
                functools.partial(
                    self.engine.prepare,
                    request_id,
                    prompts,
                    params,
                    adapter,
                    n=n,
                    cache_salt=cache_salt,
                    tenant=tenant,
                    grammar=grammar,
                )
            )
        except BaseException:  # refused, or the caller went away: nothing was queued
            self.queue_limits.left(tenant)
            raise
        stream = RequestStream(
            request_id,
            len(parent.children),
            asyncio.get_running_loop(),
            on_start=functools.partial(self.queue_limits.started, tenant),
            on_close=functools.partial(self._stream_closed, request_id, tenant),
        )
        self._streams[request_id] = stream
        self._commands.put(("add", parent))
        if self.engine_loop.died is not None:  # died before it could see the request
            stream.close()
            raise EngineUnavailableError("The engine is not running; see the server log.")
        return stream

    def _stream_closed(self, request_id: str, tenant: str, queued: bool, unfinished: bool) -> None:
        if queued:
            self.queue_limits.left(tenant)
        if unfinished:
            self._commands.put(("abort", request_id))
        self._streams.pop(request_id, None)

    async def _prepare(self, prepare: Callable[[], ParentRequest]) -> ParentRequest:
        """``LLMEngine.prepare`` on a worker thread. It holds the adapter version it resolved,
        so a request abandoned meanwhile (the client left, the loop closed) must not keep it:
        whichever of the worker and the cancelled caller comes second sends it to the engine
        thread to be dropped."""
        lock = threading.Lock()
        done: list[ParentRequest] = []  # the worker's result, once the caller may miss it
        abandoned = False

        def work() -> ParentRequest:
            parent = prepare()
            with lock:
                drop = abandoned
                done.append(parent)
            if drop:
                self._commands.put(("drop", parent))
            return parent

        try:
            return await asyncio.to_thread(work)
        except asyncio.CancelledError:
            with lock:
                abandoned = True
                left = list(done)
            for parent in left:
                self._commands.put(("drop", parent))
            raise
