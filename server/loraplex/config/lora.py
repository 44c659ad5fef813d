"""The adapters: slots, ranks, kernels, the store, merges (``--max-loras``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.config.checks import require
from loraplex.config.model import DTYPES

# add_lora backends: "torch" is the reference; "cpu" the C kernel (float32 on the CPU);
# "triton" the Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1); "auto" triton on
# CUDA, else the C kernel where it applies and builds, else the reference.
LORA_KERNELS = ("auto", "torch", "cpu", "triton")
# Slot-table dtypes (vLLM's --lora-dtype): "auto" the model's dtype; 16-bit tables under a
# float32 model halve the bytes each decode step streams (the C kernel sums in float32).
LORA_DTYPES = ("auto", *DTYPES)


@dataclass(frozen=True)
class LoRAConfig:
    """Adapter tiers: ``max_loras`` device slots (rank <= ``max_lora_rank``), ``max_cpu_loras``
    adapters in host memory, and the store (``adapter_store``: a folder or ``s3://bucket/prefix``;
    defaults to ``adapters_dir``).

    ``lora_modules`` are extra ``(name, path)`` pairs registered at start; ``adapter_roots`` are
    the only server-side folders ``/v1/adapters/load`` may read; ``merged_adapters`` are merged
    into the weights at start (pre-merged copies).

    ``max_merged_adapters`` caps the pre-merged copies held at once (each one is a copy of every
    base weight its adapter targets); 0 turns merging off.
    ``store_poll_s``: every so many seconds the store's listing is read again, so adapters that
    other replicas sharing the store uploaded, replaced or deleted are picked up (0: only at start).
    ``max_pinned_loras`` caps the adapters pinned to a device slot (None: ``max_loras // 2``), so
    pins can never leave everyone else's adapters one slot to share.
    ``max_adapters_per_tenant`` and ``max_adapter_bytes_per_tenant`` cap what one tenant keeps
    in the store (its adapters' config and weights files; 0: no cap), counted from the store at
    each upload (``adapters/quota.py``); public adapters are not counted.
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
    max_adapters_per_tenant: int = 100
    max_adapter_bytes_per_tenant: int = 4 << 30

    def __post_init__(self) -> None:
        require(
            self.kernel in LORA_KERNELS,
            f"--lora-kernel must be one of {LORA_KERNELS}, got {self.kernel!r}",
        )
        require(
            self.lora_dtype in LORA_DTYPES,
            f"--lora-dtype must be one of {LORA_DTYPES}, got {self.lora_dtype!r}",
        )
        require(self.max_loras > 0, "--max-loras must be positive")
        require(self.max_lora_rank > 0, "--max-lora-rank must be positive")
        require(self.max_cpu_loras > 0, "--max-cpu-loras must be positive")
        require(self.max_upload_mb > 0, "--max-upload-mb must be positive")
        require(self.max_merged_adapters >= 0, "--max-merged-adapters must be >= 0")
        require(self.store_poll_s >= 0, "--store-poll-s must be >= 0")
        require(self.max_adapters_per_tenant >= 0, "--max-adapters-per-tenant must be >= 0")
        require(self.max_adapter_bytes_per_tenant >= 0, "--max-adapter-mb-per-tenant must be >= 0")
        require(
            len(self.merged_adapters) <= self.max_merged_adapters,
            f"--merged-adapters names {len(self.merged_adapters)} adapters but "
            f"--max-merged-adapters is {self.max_merged_adapters}",
        )
        require(
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
