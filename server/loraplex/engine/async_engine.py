"""The engine loop in its own thread, bridged to asyncio: the event loop never runs model work.

Commands (add, abort, call) go to the engine thread through one queue; each request's outputs
come back through its own asyncio queue. That is all this module does: requests are built and
checked by :meth:`LLMEngine.prepare`, adapters are managed by :class:`AdapterService`.

Its life: requests are admitted by an :class:`AdmissionController` (429 when the queue is
full); :meth:`drain` stops admitting (503) and gives running requests a deadline; a fault that
kills the engine thread fails every open stream, and :meth:`is_healthy` turns False once the
thread is dead or has not come round its loop for ``STALL_S``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from loraplex import metrics
from loraplex.config import Config
from loraplex.engine.adapter_service import AdapterService
from loraplex.engine.adapters import AdapterSpec
from loraplex.engine.admission import (
    DEFAULT_TENANT,
    AdmissionController,
    EngineUnavailableError,
)
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import RequestOutput
from loraplex.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")
STALL_S = 60.0  # a loop iteration (one step, or an idle wait) longer than this is a hang


@dataclass
class _Stream:
    """Where one request's outputs go: an asyncio queue fed from the engine thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | Exception]  # an Exception: the engine thread died

    def put(self, item: RequestOutput | Exception) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Thread-owned :class:`LLMEngine`; ``adapters`` is the adapter service for the API."""

    def __init__(self, engine: LLMEngine, commands: queue.SimpleQueue[tuple] | None = None) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.vocab_size = engine.vocab_size
        self.eos_token_ids = engine.eos_token_ids
        self.check_fanout = engine.check_fanout  # host-side: safe from the event loop
        self.base_format = engine.runner.base_format  # what adapters are checked against
        self.created = int(time.time())
        self.adapters = AdapterService(engine.adapters, self.on_engine)
        self._commands: queue.SimpleQueue[tuple] = commands or queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        sched = engine.config.scheduler
        self.admission = AdmissionController(
            sched.max_queued_requests,
            sched.max_queued_requests_per_tenant,
            on_reject=metrics.record_rate_limited,  # loraplex_rate_limited_requests_total
        )
        self.draining = False  # set by drain(): new requests get 503
        self.died: BaseException | None = None  # what killed the engine thread
        self._heartbeat = time.monotonic()  # the engine loop's last round
        self.stall_s = STALL_S

    @classmethod
    def from_config(cls, config: Config) -> AsyncEngine:
        commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        engine = build_engine(config, on_adapter_loaded=lambda: commands.put(("wake",)))
        return cls(engine, commands)

    async def on_engine(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread between two steps (it owns slots and weights)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._commands.put(("call", fn, future))
        return await future

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loraplex-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.engine.registry.close()  # stop the adapter loader threads

    def is_healthy(self) -> bool:
        """Liveness: the engine thread runs and came round its loop within ``stall_s``
        (``STALL_S``; an idle loop comes round every half second)."""
        alive = self._thread is not None and self._thread.is_alive() and not self._stop.is_set()
        return alive and time.monotonic() - self._heartbeat < self.stall_s

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

    def check_admission(self, tenant: str = DEFAULT_TENANT) -> None:
        """Raise what :meth:`generate` would refuse with (503, 429) before any work is done."""
        self._refuse_if_unavailable()
        self.admission.check(tenant)

    def _refuse_if_unavailable(self) -> None:
        if self.draining:
            raise EngineUnavailableError("The server is shutting down; retry on another replica.")
        if not self.is_healthy():
            raise EngineUnavailableError("The engine is not running; see the server log.")

    def stats(self) -> dict[str, object]:
        return self.engine.stats()

    async def generate(
        self,
        request_id: str,
        prompts: list[list[int]],
        params: SamplingParams,
        adapter: AdapterSpec = None,
        *,
        n: int = 1,
        cache_salt: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the output deltas of every child (``index`` tells which) until all finished;
        abort what is left if iteration stops early. A child's error is raised.

        ``adapter``: a name, a weighted mix ``[(name, weight), ...]`` or None (base model).
        ``n`` samples per prompt; ``cache_salt``: only the same salt shares prefix blocks;
        ``tenant``: whose queue share it takes (``QueueFullError`` when full: a 429).
        """
        self._refuse_if_unavailable()
        self.admission.admit(tenant)  # queued until its first output
        queued, unfinished = True, 0
        try:
            # Checked and resolved once, off the event loop (a mix is combined here): unknown
            # names and impossible prompts fail now, before any byte is sent.
            parent = await asyncio.to_thread(
                self.engine.prepare,
                request_id,
                prompts,
                params,
                adapter,
                n=n,
                cache_salt=cache_salt,
                tenant=tenant,
            )
            stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
            self._streams[request_id] = stream
            self._commands.put(("add", parent))
            unfinished = len(parent.children)
            if self.died is not None:  # died before it could see the request
                raise EngineUnavailableError("The engine is not running; see the server log.")
            while unfinished:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                if queued and item.error is None:
                    queued = False
                    self.admission.started(tenant)
                if item.error is not None:
                    raise item.error
                unfinished -= item.finished
                yield item
        finally:
            if queued:
                self.admission.left(tenant)
            if unfinished:
                self._commands.put(("abort", request_id))
            self._streams.pop(request_id, None)

    # ---- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            busy = False
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                # Block only when no step can progress: nothing queued, or every queued request
                # waits for its adapter to load (the loader posts "wake" when it is done).
                self._drain_commands(block=not busy)
                busy = self.engine.has_unfinished() and self._step()
            self._deliver(self.engine.abort_all())
        except BaseException as exc:  # a bug outside the step: nothing will ever step again
            log.exception("the engine thread died; failing every open request")
            self.died = exc
            error = EngineUnavailableError("The engine failed; see the server log.")
            for stream in list(self._streams.values()):
                stream.put(error)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple) -> None:
        kind, *args = command
        if kind == "add":
            self.engine.submit(args[0])
        elif kind == "abort":  # (request_id[, the error its client gets])
            self._deliver(self.engine.abort(*args))
        elif kind == "call":
            fn, future = args
            try:
                result = fn()
            except Exception as exc:
                future.get_loop().call_soon_threadsafe(_settle, future, None, exc)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)

    def _step(self) -> bool:
        """One engine step; False when nothing could be scheduled."""
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:  # outside the forward (which fails only its own requests)
            log.exception("engine step failed")
            self._deliver(self.engine.abort_all(RuntimeError(f"engine step failed: {exc}")))
            return False
        self._deliver(outputs)
        if self.engine.idle:
            return False
        metrics.STEP_DURATION.observe(time.perf_counter() - start)
        return True

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)


def _settle(future: asyncio.Future, result: object, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
