"""How much of a GPU the KV cache gets (``--gpu-memory-utilization``, vLLM's meaning).

The engine may hold ``utilization × total`` bytes of the device. By the time the cache is sized,
the weights and the LoRA slot tables are already on it; what the device has in use then
(``total - free``, which also counts other processes) comes off first, then a reserve for one
forward's transient activations; the rest is the KV cache. No torch here: the caller measures.
"""

from __future__ import annotations

# A floor under the activation estimate: allocator fragmentation, cuBLAS workspaces, the
# sampler's buffers.
MIN_ACTIVATION_RESERVE = 1 << 30


def activation_reserve_bytes(
    tokens: int, hidden: int, intermediate: int, vocab: int, itemsize: int, dequantized: int = 0
) -> int:
    """An upper bound of one forward's live activations for ``tokens`` packed tokens: the
    residual stream and a layer's widest intermediates (q/k/v and gate/up, ~4 hidden + 2
    intermediate wide) plus float32 logits for every row (prompt logprobs may score them
    all), with MIN_ACTIVATION_RESERVE as a floor; plus ``dequantized``, the largest projection
    of a quantized base in the compute dtype (bitsandbytes dequantizes one weight at a time
    for a many-row GEMM). The weights themselves are measured, not estimated: a 4-bit base
    leaves its saved bytes to the KV cache."""
    per_token = (4 * hidden + 2 * intermediate) * itemsize + vocab * 4
    return max(MIN_ACTIVATION_RESERVE, tokens * per_token) + dequantized


def kv_cache_bytes(total: int, free: int, utilization: float, reserve: int) -> int:
    """Bytes for the KV cache: ``utilization × total - (total - free) - reserve``.

    Raises ``ValueError`` naming the option when nothing is left (the weights alone may not
    fit the fraction, or another process holds the device).
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], got {utilization}")
    if not 0 <= free <= total:
        raise ValueError(f"free device memory {free} is not within the total {total}")
    budget = int(total * utilization) - (total - free) - reserve
    if budget <= 0:
        gib = 2**30
        raise ValueError(
            f"--gpu-memory-utilization {utilization} leaves no room for the KV cache: "
            f"{utilization * total / gib:.1f} GiB allowed, {(total - free) / gib:.1f} GiB in "
            f"use (weights, adapter slots, other processes), {reserve / gib:.1f} GiB reserved "
            "for activations"
        )
    return budget
