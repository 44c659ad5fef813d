"""KV cache sizing on a GPU (``--gpu-memory-utilization``), as plain arithmetic."""

from __future__ import annotations

import pytest
import torch
from builders import model_config

from loraplex.config import CacheConfig
from loraplex.engine.runner.memory_sizing import (
    MIN_ACTIVATION_RESERVE,
    activation_reserve_bytes,
    kv_cache_bytes,
)
from loraplex.engine.runner.model_runner import kv_layout

GIB = 2**30


def test_the_cache_gets_the_allowed_fraction_less_what_is_in_use_and_the_reserve() -> None:
    # An H200 (141 GiB) at 0.9 holding 16 GiB of bf16 Llama-3-8B and 5 GiB of adapter slots.
    total, in_use = 141 * GIB, 21 * GIB
    budget = kv_cache_bytes(total, total - in_use, 0.9, reserve=2 * GIB)
    assert budget == int(0.9 * total) - in_use - 2 * GIB
    # Another process holding 30 GiB of the device leaves this engine 30 GiB less.
    shared = kv_cache_bytes(total, total - in_use - 30 * GIB, 0.9, reserve=2 * GIB)
    assert budget - shared == 30 * GIB


def test_nothing_left_or_nonsense_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="leaves no room for the KV cache"):
        kv_cache_bytes(24 * GIB, 24 * GIB - 17 * GIB, 0.7, reserve=GIB)  # 8B weights on 24 GiB
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        kv_cache_bytes(GIB, GIB, 1.5, reserve=0)
    with pytest.raises(ValueError, match="not within"):
        kv_cache_bytes(GIB, 2 * GIB, 0.9, reserve=0)
    with pytest.raises(ValueError, match="gpu-memory-utilization"):
        CacheConfig(gpu_memory_utilization=0)


def test_activation_reserve_counts_every_rows_logits_with_a_floor() -> None:
    assert activation_reserve_bytes(16, 64, 128, 96, 4) == MIN_ACTIVATION_RESERVE
    big = activation_reserve_bytes(4096, 4096, 14336, 128256, 2)
    assert big == 4096 * ((4 * 4096 + 2 * 14336) * 2 + 128256 * 4)  # ~2.3 GiB for an 8B


def test_a_quantized_base_leaves_its_saved_bytes_to_the_cache() -> None:
    # An H100 (80 GiB) at 0.9: Llama-3-8B in bf16 (~15 GiB) or NF4 (~6 GiB: 4-bit
    # projections, bf16 embeddings); the NF4 base reserves one dequantized down_proj too.
    total, tokens = 80 * GIB, 8192
    reserve = activation_reserve_bytes(tokens, 4096, 14336, 128256, 2)
    down_proj = 14336 * 4096 * 2
    quantized = activation_reserve_bytes(tokens, 4096, 14336, 128256, 2, dequantized=down_proj)
    assert quantized == reserve + down_proj
    bf16 = kv_cache_bytes(total, total - 15 * GIB, 0.9, reserve)
    nf4 = kv_cache_bytes(total, total - 6 * GIB, 0.9, quantized)
    assert nf4 - bf16 == 9 * GIB - down_proj  # ~8.9 GiB more KV: ~73k more tokens of 8B


def test_blocks_come_from_the_measured_budget() -> None:
    config = model_config("llama")  # 2 layers, 2 KV heads of 16
    per_block = 2 * 2 * 16 * 2 * 16 * 4  # keys and values x layers x block x heads x dim x fp32
    layout = kv_layout(config, CacheConfig(block_size=16), torch.float32, 10 * per_block + 5)
    assert layout.num_blocks == 10
    assert (
        kv_layout(config, CacheConfig(block_size=16, num_blocks=3), torch.float32, 1).num_blocks
        == 3
    )
