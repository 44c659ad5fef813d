"""The engine loop in its own thread, bridged to asyncio: the event loop never runs model work."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loraplex import metrics
from loraplex.adapters.card import AdapterCard
from loraplex.config import Config
from loraplex.engine.adapters import AdapterSpec
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.outputs import RequestOutput
from loraplex.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Stream:
    """Where one request's outputs go: an asyncio queue fed from the engine thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    """Thread-owned :class:`LLMEngine`; requests arrive through a command queue."""

    def __init__(self, engine: LLMEngine, commands: queue.SimpleQueue[tuple] | None = None) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.max_model_len
        self.eos_token_ids = engine.eos_token_ids
        self.created = int(time.time())
        self._commands: queue.SimpleQueue[tuple] = commands or queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, config: Config) -> AsyncEngine:
        commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        engine = LLMEngine(config, on_adapter_loaded=lambda: commands.put(("wake",)))
        return cls(engine, commands)

    def adapter_names(self) -> list[str]:
        return self.engine.registry.names()

    def has_adapter(self, name: str) -> bool:
        return self.engine.registry.has(name)

    # ---- adapter management (validation and I/O in worker threads, slots on the engine) ---

    def adapter_cards(self) -> list[AdapterCard]:
        return self.engine.registry.cards()

    def adapter_card(self, name: str) -> tuple[AdapterCard, dict[str, object]]:
        """The card and where the adapter is now (device slot, host memory, store)."""
        card = self.engine.registry.get(name)
        return card, self.engine.adapters.location(card)

    async def register_adapter(
        self,
        name: str,
        folder: Path,
        *,
        replace: bool = False,
        description: str | None = None,
        pinned: bool = False,
    ) -> AdapterCard:
        """Validate and store ``folder`` as ``name``; a replaced version leaves the device."""
        registry, adapters = self.engine.registry, self.engine.adapters
        if pinned:
            adapters.check_pin_capacity()
        old = registry.get(name) if registry.has(name) else None
        card = await asyncio.to_thread(
            registry.register, name, folder, replace=replace, description=description, pinned=pinned
        )

        def settle() -> None:
            if old is not None and old.key != card.key:
                adapters.forget(old.key)
            if pinned:
                adapters.pin(card)

        await self.on_engine(settle)
        return card

    async def load_adapter_path(self, name: str, path: str, replace: bool = False) -> AdapterCard:
        folder = self.engine.adapters.check_path(path)
        return await self.register_adapter(name, folder, replace=replace)

    async def remove_adapter(self, name: str) -> AdapterCard:
        """New requests get 404 at once; running ones finish on the weights they hold."""
        card = await asyncio.to_thread(self.engine.registry.remove, name)
        await self.on_engine(lambda: self.engine.adapters.forget(card.key))
        return card

    async def merge_adapter(self, name: str) -> AdapterCard:
        return await self.on_engine(lambda: self.engine.adapters.merge(name))

    async def unmerge_adapter(self, name: str) -> AdapterCard:
        return await self.on_engine(lambda: self.engine.adapters.unmerge(name))

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
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stats(self) -> dict[str, float]:
        return self.engine.stats()

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        adapter: AdapterSpec,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield output deltas until the finished one; abort the request if iteration stops.

        ``adapter``: a name, a weighted mix ``[(name, weight), ...]`` or None (base model).
        ``cache_salt``: only requests with the same salt share prefix-cache blocks.
        """
        self.engine.check_request(prompt_token_ids, params)
        # Unknown names fail now, before any byte is sent; a mix is combined off the engine.
        await asyncio.to_thread(self.engine.adapters.resolve, adapter)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, prompt_token_ids, params, adapter, cache_salt))
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
        busy = False
        while not self._stop.is_set():
            # Block only when no step can progress: nothing queued, or every queued request
            # waits for its adapter to load (the loader posts "wake" when it is done).
            self._drain_commands(block=not busy)
            busy = self.engine.has_unfinished() and self._step()
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
        except Exception as exc:
            # A failed step must not kill the server: fail its requests, keep serving.
            log.exception("engine step failed")
            for request_id in list(self.engine.requests):
                self.engine.abort(request_id)
                stream = self._streams.get(request_id)
                if stream is not None:
                    stream.put(RuntimeError(f"engine step failed: {exc}"))
            return False
        while self.engine.failed:
            request_id, error = self.engine.failed.pop()
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put(error)
        if self.engine.last_step_idle:
            return False
        metrics.STEP_DURATION.observe(time.perf_counter() - start)
        for output in outputs:
            self._deliver(output)
        return True

    def _deliver(self, output: RequestOutput | None) -> None:
        if output is None:
            return
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
