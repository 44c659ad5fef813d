"""The engine loop in its own thread, bridged to asyncio: the event loop never runs model work."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from loraplex import metrics
from loraplex.config import Config
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import RequestOutput
from loraplex.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """Where one request's outputs go: an asyncio queue fed from the engine thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Thread-owned :class:`LLMEngine`; requests arrive through a command queue."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.created = int(time.time())
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, config: Config) -> AsyncEngine:
        return cls(LLMEngine(config))

    def adapter_names(self) -> list[str]:
        return self.engine.registry.names()

    def has_adapter(self, name: str) -> bool:
        return self.engine.registry.has(name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loraplex-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=30)

    def is_healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: str | None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield output deltas until the finished one; abort the request if iteration stops."""
        self.engine.check_request(prompt_token_ids, params)
        if adapter is not None:
            self.engine.registry.get(adapter)  # unknown name -> AdapterNotFoundError, now
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, prompt_token_ids, params, adapter))
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(("abort", request_id))
            self._streams.pop(request_id, None)

    # ---- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            block = not self.engine.has_unfinished()
            self._drain_commands(block)
            if self.engine.has_unfinished():
                self._step()
        for request_id in list(self.engine.requests):
            self._deliver(self.engine.abort(request_id))

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
            request_id = args[0]
            try:
                self.engine.add_request(*args)
            except Exception as exc:  # e.g. the adapter was deleted after the API checked it
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.put(exc)
        elif kind == "abort":
            self._deliver(self.engine.abort(args[0]))

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # A failed step must not kill the server: fail its requests, keep serving.
            log.exception("engine step failed")
            for request_id in list(self.engine.requests):
                self.engine.abort(request_id)
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.put(RuntimeError(f"engine step failed: {exc}"))
            return
        metrics.STEP_DURATION.observe(time.perf_counter() - start)
        for output in outputs:
            self._deliver(output)

    def _deliver(self, output: RequestOutput | None) -> None:
        if output is None:
            return
        stream = self._streams.get(output.request_id)
        if stream is not None:
            stream.put(output)
