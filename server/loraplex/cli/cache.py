"""The ``KV cache`` options of ``loraplex serve``: the flags and the :class:`CacheConfig`."""

from __future__ import annotations

import argparse

from loraplex.config import CacheConfig


def add_options(serve: argparse.ArgumentParser) -> None:
    """The KV cache options."""
    cache = serve.add_argument_group("KV cache")
    cache.add_argument(
        "--block-size", type=int, default=CacheConfig.block_size, help="tokens per KV-cache block"
    )
    cache.add_argument(
        "--kv-cache-memory-mb",
        type=int,
        default=CacheConfig.kv_cache_memory_mb,
        help="memory for the KV cache, from which the number of blocks is derived (on the "
        "CPU; a CUDA device uses --gpu-memory-utilization)",
    )
    cache.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=CacheConfig.gpu_memory_utilization,
        help="with a CUDA device: the fraction of its memory the engine may hold (weights, "
        "adapter slots, activations, KV cache); the KV cache gets what is left",
    )
    cache.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="number of KV-cache blocks; overrides --kv-cache-memory-mb",
    )
    cache.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=CacheConfig.enable_prefix_caching,
        help="share the KV of full blocks of a repeated prompt prefix (same adapter) across "
        "requests instead of recomputing it",
    )


def to_config(args: argparse.Namespace) -> CacheConfig:
    """The :class:`CacheConfig` of parsed ``serve`` arguments (validated there)."""
    return CacheConfig(
        block_size=args.block_size,
        kv_cache_memory_mb=args.kv_cache_memory_mb,
        num_blocks=args.num_blocks,
        enable_prefix_caching=args.enable_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
