"""bench/gpu.py sections 1 and 2: the Triton kernels checked against the torch references at
real shapes, and timed against them (one ``Case`` row per shape)."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Llama-3-8B's seven projections: (in, out).
PROJECTIONS = {
    "q_proj": (4096, 4096),
    "k_proj": (4096, 1024),
    "v_proj": (4096, 1024),
    "o_proj": (4096, 4096),
    "gate_proj": (4096, 14336),
    "up_proj": (4096, 14336),
    "down_proj": (14336, 4096),
}
SMOKE_DIVISOR = 64  # --smoke: every width / 64 (the shapes stay distinct)


@dataclass
class Case:
    """One checked and timed shape: errors are max |got - fp32 truth| / max |truth delta|."""

    section: str
    shape: str
    reference_us: float
    triton_us: float
    triton_error: float
    reference_error: float
    passed: bool

    @property
    def speedup(self) -> float:
        return self.reference_us / self.triton_us if self.triton_us else float("nan")


def timed(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Mean microseconds per call after one untimed call (CUDA: events around ``iters`` calls)."""
    fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / iters
    begin = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - begin) * 1e6 / iters


def _relative(got: torch.Tensor, truth: torch.Tensor, base: torch.Tensor) -> float:
    scale = (truth - base.float()).abs().max().clamp_min(1e-12)
    return float((got.float() - truth).abs().max() / scale)


def lora_cases(device, dtype, smoke: bool, iters: int, tolerance: float) -> list[Case]:
    from loraplex.lora.ops import add_lora, build_lora_meta
    from loraplex.lora.ops.triton_ops import add_lora as triton_add_lora

    slots, rank = (4, 16) if smoke else (16, 16)
    cases = []
    for rows in (8,) if smoke else (16, 64, 512, 4096):
        row_slots = [i * slots // rows for i in range(rows)]  # every slot, evenly
        meta = build_lora_meta(row_slots, slots, device)
        ranks = torch.full((slots,), rank, dtype=torch.int32, device=device)
        meta = dataclasses.replace(meta, slot_ranks=ranks)
        for name, (fan_in, fan_out) in PROJECTIONS.items():
            if smoke:
                fan_in, fan_out = fan_in // SMOKE_DIVISOR, fan_out // SMOKE_DIVISOR
            x = torch.randn(rows, fan_in, device=device).to(dtype)
            y = torch.randn(rows, fan_out, device=device).to(dtype)
            lora_a = (torch.randn(slots, rank, fan_in, device=device) * fan_in**-0.5).to(dtype)
            lora_b = (torch.randn(slots, rank, fan_out, device=device) * rank**-0.5).to(dtype)
            truth = y.float().clone()
            add_lora(truth, x.float(), lora_a.float(), lora_b.float(), meta)
            errors = []
            for op in (add_lora, triton_add_lora):
                out = y.clone()
                op(out, x, lora_a, lora_b, meta)
                errors.append(_relative(out, truth, y))
            work = y.clone()
            times = [
                timed(functools.partial(op, work, x, lora_a, lora_b, meta), device, iters)
                for op in (add_lora, triton_add_lora)
            ]
            cases.append(
                Case(
                    "add_lora",
                    f"T={rows} {name} {fan_in}x{fan_out}",
                    times[0],
                    times[1],
                    errors[1],
                    errors[0],
                    errors[1] <= max(2 * errors[0], tolerance),
                )
            )
    return cases


def _attention_step(shapes, block_size: int, device: torch.device):
    """AttentionMetadata for sequences given as (cached, new) tokens on shuffled blocks."""
    from loraplex.engine.request.params import SamplingParams
    from loraplex.engine.request.sequence import Sequence
    from loraplex.engine.runner.batch import build_batch
    from loraplex.engine.sched.scheduler import ScheduledSeq

    need = sum(-(-(c + n) // block_size) for c, n in shapes)
    free = list(range(need))
    random.Random(0).shuffle(free)
    scheduled = []
    for i, (cached, new) in enumerate(shapes):
        seq = Sequence(str(i), [0] * (cached + new), SamplingParams())
        seq.block_table = [free.pop() for _ in range(-(-(cached + new) // block_size))]
        seq.num_computed_tokens = cached
        scheduled.append(ScheduledSeq(seq, new))
    return build_batch(scheduled, {}, block_size, 1, device).attention, need


def attention_cases(device, dtype, smoke: bool, iters: int, tolerance: float) -> list[Case]:
    from loraplex.engine.attention.sdpa import sdpa_attend
    from loraplex.engine.attention.triton import triton_attend

    heads, kv_heads, dim, block = (6, 2, 32, 4) if smoke else (32, 8, 128, 16)
    if smoke:
        steps = {"decode 4 x 40": [(39, 1)] * 4, "prefill 32": [(0, 32)]}
    else:
        steps = {"decode 64 x 2k": [(2047, 1)] * 64, "prefill 4k": [(0, 4096)]}
    cases = []
    for label, shapes in steps.items():
        meta, blocks = _attention_step(shapes, block, device)
        rows = meta.slot_mapping.shape[0]
        caches = [
            torch.randn(blocks * block, kv_heads, dim, device=device).to(dtype) for _ in range(2)
        ]
        q = torch.randn(rows, heads, dim, device=device).to(dtype).transpose(0, 1)
        k, v = (torch.randn(rows, kv_heads, dim, device=device).to(dtype) for _ in range(2))
        for cache, fresh in zip(caches, (k, v), strict=True):
            cache.index_copy_(0, meta.slot_mapping, fresh)
        args = (q, k, v, *caches, meta, dim**-0.5)
        wide = [t.float() for t in (q, k, v, *caches)]
        truth = sdpa_attend(*wide, meta, dim**-0.5)
        zero = torch.zeros_like(truth)
        errors = [_relative(fn(*args), truth, zero) for fn in (sdpa_attend, triton_attend)]
        times = [
            timed(functools.partial(fn, *args), device, iters)
            for fn in (sdpa_attend, triton_attend)
        ]
        cases.append(
            Case(
                "attention",
                f"{label} (H {heads}/{kv_heads}, D {dim})",
                times[0],
                times[1],
                errors[1],
                errors[0],
                errors[1] <= max(2 * errors[0], tolerance),
            )
        )
    return cases
