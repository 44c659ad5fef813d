"""CUDA graphs of the pure-decode forward, one per padded batch size.

A decode step of a large model launches thousands of small kernels; replaying a captured graph
issues them all in one call. The forward reads only the persistent buffers of
``decode_inputs.DecodeInputs`` (filled by one copy before the replay) and the slot tables,
which adapters are written into in place, so one graph per batch size serves every later step
and every mix of adapters. Sizes are captured largest first into one shared memory pool (the
smaller graphs reuse the largest one's intermediate memory), after warm-up runs that compile
the Triton kernels and settle the allocator, as vLLM and nano-vllm do.

Graphs need the forward to be capturable: both Triton backends (the torch LoRA op's grouped
path synchronizes with the host, and the SDPA decode path's shapes follow the step). Anything
else, ``--enforce-eager``, batches above the largest size, prefill and mixed steps run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

# Largest batch captured (vLLM's default max capture size); bigger decode steps run eagerly.
MAX_CAPTURE_SIZE = 512
WARMUP_RUNS = 2


def graphs_unavailable(device: torch.device, backends: tuple[str, str], enforce_eager: bool):
    """Why decode steps cannot replay CUDA graphs here (None: they can).

    ``backends`` is the runner's ``(add_lora, attention)`` pair."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, not {device.type}"
    if enforce_eager:
        return "--enforce-eager"
    if backends != ("triton", "triton"):
        return f"CUDA graphs need both Triton backends (add_lora, attention), not {backends}"
    return None


class DecodeGraphs:
    """One captured graph per batch size; ``forward(size)`` is the step's forward over the
    persistent buffers (its returned logits become the graph's static output)."""

    def __init__(
        self,
        forward: Callable[[int], torch.Tensor],
        sizes: list[int],
        prepare: Callable[[int], None],
        every_layer: Callable[[bool], None],
    ) -> None:
        """``prepare(size)`` fills the buffers with a harmless batch (padding rows) before the
        warm-ups; ``every_layer(on)`` makes each LoRA layer call its op during capture."""
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        pool = None
        every_layer(True)
        try:
            for size in sorted((s for s in sizes if s <= MAX_CAPTURE_SIZE), reverse=True):
                prepare(size)
                for _ in range(WARMUP_RUNS):
                    forward(size)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: the server's other threads (adapter loads) may use CUDA meanwhile
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    self.outputs[size] = forward(size)
                pool = graph.pool() if pool is None else pool
                self.graphs[size] = graph
            torch.cuda.synchronize()
        finally:
            every_layer(False)
        log.info("captured CUDA graphs of decode steps for batch sizes %s", sorted(self.graphs))

    def captured(self, size: int) -> bool:
        return size in self.graphs

    def replay(self, size: int) -> torch.Tensor:
        """Replay the graph of ``size`` rows; returns its logits [size, vocab] (overwritten by
        the next replay of that size: read them before the next step)."""
        self.graphs[size].replay()
        return self.outputs[size]
