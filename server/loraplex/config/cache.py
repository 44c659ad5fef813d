"""The paged KV cache (``--block-size``, ``--kv-cache-memory-mb``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.config.checks import require


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
        require(self.block_size > 0, "--block-size must be positive")
        require(0 < self.gpu_memory_utilization <= 1, "--gpu-memory-utilization must be in (0, 1]")
        require(self.kv_cache_memory_mb > 0, "--kv-cache-memory-mb must be positive")
        require(self.num_blocks is None or self.num_blocks > 0, "--num-blocks must be positive")
