"""A real ``loraplex serve`` in its own process on a free loopback port, for the benchmarks.

The command is ``python -m loraplex.cli serve`` (what the ``loraplex`` console script runs) with
this checkout's ``server/`` first on ``PYTHONPATH``, so the code under test is the working tree's,
whatever is installed. Its output goes to a log file next to the results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SERVER_SOURCE = Path(__file__).resolve().parent.parent / "server"


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(port: int, options: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        *("-m", "loraplex.cli", "serve"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        *options,
    ]


def _log_tail(log: Path, lines: int = 30) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float, name: str = "loraplex"
) -> None:
    """Until ``url/health`` answers 200; raises with the log's tail if the process exits or
    ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with status {process.returncode} before it was ready; "
                f"the end of {log}:\n{_log_tail(log)}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    raise RuntimeError(f"{name} was not ready after {timeout:.0f} s; see {log}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def loraplex_server(options: Sequence[str], log: Path, timeout: float = 600.0) -> Iterator[str]:
    """Base URL (no ``/v1``) of ``loraplex serve <options>``; stopped (SIGTERM, then SIGKILL
    after 30 s) on exit, whatever happened inside."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SERVER_SOURCE), env.get("PYTHONPATH", "")) if p
    )
    env.setdefault("TQDM_DISABLE", "1")  # no weight-loading bars in the log
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(port, options), stdout=out, stderr=subprocess.STDOUT, env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log, timeout)
            yield url
        finally:
            stop_process(process)
