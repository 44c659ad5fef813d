"""The HTTP server: where it listens, who may call, how long a client may take."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.api_keys import ApiKeyEntry, key_digest
from loraplex.config.checks import require


@dataclass(frozen=True)
class ServerConfig:
    """Where uvicorn listens, who may call, and how long a client may take to send a request.

    ``api_key`` (one admin key) and ``api_keys`` (``--api-keys-file``: tenants and roles) are
    the accepted keys; with neither, every caller is an admin of tenant "default".

    ``timeout_keep_alive``: an idle connection between requests is closed after it (uvicorn's).
    ``header_timeout``: a request head must arrive within it (of its first byte, or of the
    connection). ``body_timeout`` + received bytes / ``body_min_rate``: the deadline of a body
    (0 as the rate: a fixed deadline); past it a 408 and the connection closes.
    ``metrics_require_key``: with keys configured, ``/metrics`` without one is a 401 instead of
    the anonymous view (tenants and their adapters as opaque labels; ``api/auth.py``).
    ``max_request_mb``: the largest request body other than an adapter upload (413 past it,
    counted as it streams in). ``max_chat_messages``: the most messages a chat request may
    have, and the most content parts in all (checked before they are validated or rendered).
    ``tokenizer_threads``: the pool that tokenizes, renders chat templates and decodes echoes
    off the event loop. ``shutdown_timeout``: after SIGTERM, running requests get this long
    to finish before they are aborted. ``ui``: serve the playground page at ``/``
    (``--no-ui`` turns it off; the API is the same either way).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    api_keys: tuple[ApiKeyEntry, ...] = ()  # --api-keys-file (api_keys.load_api_keys_file)
    log_level: str = "info"
    metrics_adapter_labels: int = 32  # distinct adapter names as metric labels (rest: other)
    metrics_require_key: bool = False  # /metrics without a key: 401 (else the anonymous view)
    timeout_keep_alive: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 65536
    max_request_mb: int = 16
    max_chat_messages: int = 2048  # OpenAI's own cap on messages
    tokenizer_threads: int = 4
    shutdown_timeout: float = 30.0
    ui: bool = True

    def __post_init__(self) -> None:
        require(self.max_request_mb > 0, "--max-request-mb must be positive")
        require(self.max_chat_messages > 0, "--max-chat-messages must be positive")
        require(self.tokenizer_threads > 0, "--tokenizer-threads must be positive")
        require(self.shutdown_timeout >= 0, "--shutdown-timeout must be >= 0")
        require(0 <= self.port < 65536, "--port must be in 0..65535")
        require(self.metrics_adapter_labels >= 0, "--metrics-adapter-labels must be >= 0")
        require(self.timeout_keep_alive > 0, "--timeout-keep-alive must be positive")
        require(self.header_timeout > 0, "--header-timeout must be positive")
        require(self.body_timeout > 0, "--body-timeout must be positive")
        require(self.body_min_rate >= 0, "--body-min-rate must be >= 0")
        require(self.api_key is None or len(self.api_key) > 0, "--api-key must not be empty")
        digests = [entry.sha256 for entry in self.key_entries]
        require(len(set(digests)) == len(digests), "--api-key is also a key of --api-keys-file")

    @property
    def key_entries(self) -> tuple[ApiKeyEntry, ...]:
        """Every accepted key: the file's, and ``--api-key`` as an admin of tenant "default".
        None: the server is open (and listens on loopback unless --host says otherwise)."""
        shorthand = ()
        if self.api_key is not None:
            shorthand = (ApiKeyEntry(key_digest(self.api_key), DEFAULT_TENANT, "admin"),)
        return self.api_keys + shorthand
