"""uvicorn serving an ASGI app in a background thread of this process.

For tests, benchmarks and embedding loraplex in another program: ``start()`` returns the base URL
once the server is up, ``stop()`` shuts it down. ``loraplex serve`` does not use it (it runs
uvicorn in the foreground). Binds 127.0.0.1 by default, on a free port unless one is given.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from loraplex.config import Config, ServerConfig


class ThreadedServer:
    """uvicorn serving ``app`` on ``host`` (IPv4) : ``port`` (0: a free one), in a daemon thread."""

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, server: ServerConfig | None = None
    ) -> None:
        """``server``: the connection deadlines (``loraplex serve``'s); default: the app's
        config (``create_app`` keeps it in ``app.state.config``), else the defaults."""
        import uvicorn

        from loraplex.api.http_protocol import uvicorn_options

        if server is None:
            config = getattr(getattr(app, "state", None), "config", None)
            server = config.server if isinstance(config, Config) else ServerConfig()

        # Bind first, so the port is known and nothing can take it between choosing and serving.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, port))
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
                **uvicorn_options(server),
            )
        )
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 120.0) -> str:
        """Start serving; the base URL (``http://127.0.0.1:PORT``, no ``/v1``) once it is up."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server exited during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.05)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to exit, wait up to ``timeout`` s for its thread, free the socket."""
        self.server.should_exit = True
        self._thread.join(timeout=timeout)
        self._sock.close()
