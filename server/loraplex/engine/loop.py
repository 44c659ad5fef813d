"""The engine's own thread: it applies the commands the event loop sends (add, drop, abort,
call) between steps, steps while there is work, and hands each step's outputs to their streams.

Between two steps nothing else touches the engine (slots, weights, the scheduler), so a command
is the only way in; the loop blocks for one only when no step can progress (nothing queued, or
every queued request waits for its adapter to load: the loader posts "wake" when it is done). A
fault outside a step kills the thread: every open stream is failed (``died``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from loraplex import metrics
from loraplex.engine.errors import EngineUnavailableError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.outputs import RequestOutput
from loraplex.engine.request.stream import RequestStream

log = logging.getLogger(__name__)


class EngineLoop:
    """Runs ``engine`` on a thread named ``loraplex-engine``; ``commands`` come from the event
    loop, outputs go to ``streams`` (request id -> stream, kept by ``AsyncEngine``)."""

    def __init__(
        self,
        engine: LLMEngine,
        commands: queue.SimpleQueue[tuple],
        streams: dict[str, RequestStream],
    ) -> None:
        self.engine = engine
        self.commands = commands
        self.streams = streams
        self.died: BaseException | None = None  # what killed the thread
        self.heartbeat = time.monotonic()  # the loop's last round
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loraplex-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Abort what is left (its streams get their last output) and end the thread."""
        self._stopping.set()
        self.commands.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    @property
    def alive(self) -> bool:
        """The thread runs and was not asked to stop."""
        running = self._thread is not None and self._thread.is_alive()
        return running and not self._stopping.is_set()

    def _run(self) -> None:
        try:
            busy = False
            while not self._stopping.is_set():
                self.heartbeat = time.monotonic()
                # Block only when no step can progress: nothing queued, or every queued request
                # waits for its adapter to load (the loader posts "wake" when it is done).
                self._drain_commands(block=not busy)
                busy = self.engine.has_unfinished() and self._step()
            self.deliver(self.engine.abort_all())
        except BaseException as exc:  # a bug outside the step: nothing will ever step again
            log.exception("the engine thread died; failing every open request")
            self.died = exc
            error = EngineUnavailableError("The engine failed; see the server log.")
            for stream in list(self.streams.values()):
                stream.put(error)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self.commands.get(timeout=0.5) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, command: tuple) -> None:
        kind, *args = command
        if kind == "add":
            self.engine.submit(args[0])
        elif kind == "drop":  # prepared, never submitted: let go of what it holds
            self.engine.drop(args[0])
        elif kind == "abort":  # (request_id[, the error its client gets])
            self.deliver(self.engine.abort(*args))
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
            self.deliver(self.engine.abort_all(RuntimeError(f"engine step failed: {exc}")))
            return False
        self.deliver(outputs)
        if self.engine.idle:
            return False
        metrics.STEP_DURATION.observe(time.perf_counter() - start)
        return True

    def deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams with one wake-up of each event loop (not one
        per output: each wake-up is a syscall and a GIL hand-over the engine thread waits on)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestOutput]]] = {}
        for output in outputs:
            stream = self.streams.get(output.request_id)
            if stream is not None:
                batches.setdefault(stream.loop, []).append((stream, output))
        for loop, batch in batches.items():
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[RequestStream, RequestOutput]]) -> None:
    for stream, output in batch:
        stream.put_nowait(output)


def _settle(future: asyncio.Future, result: object, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
