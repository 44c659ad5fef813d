"""The CPU add_lora op alone, at the default model's shapes: one decode step's LoRA work.

A decode step of 32 rows over 16 distinct adapters (two rows each) runs ``add_lora`` once per
projection: SmolLM2-135M's seven projections in each of ``--layers`` layers, every layer with its
own slot tables (so the step streams them from memory, as the engine does). The slot tables have
rank ``--max-rank``; the adapters' real ranks are the scenario's. Variants (slot-table dtype, and
whether the kernel gets the per-slot ranks or streams every slot's padded rank) run interleaved,
one step each per round, so machine noise hits them alike. Each row: milliseconds per step
(median over ``--iters`` rounds), the bytes of slot tables a step must read, and that over the
time.

    .venv/bin/python bench/lora_op.py                   # 30 layers, max rank 64, 16 slots
    .venv/bin/python bench/lora_op.py --dtypes float32,bfloat16,float16 --ranks real
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loraplex.lora.ops import build_lora_meta
from loraplex.lora.ops.cpu_ops import load

# SmolLM2-135M's seven projections: (in, out).
PROJECTIONS = {
    "q_proj": (576, 576),
    "k_proj": (576, 192),
    "v_proj": (576, 192),
    "o_proj": (576, 576),
    "gate_proj": (576, 1536),
    "up_proj": (576, 1536),
    "down_proj": (1536, 576),
}
SLOTS = 16
# Real ranks of the 16 adapters in each scenario.
SCENARIOS = {
    "all r64": [64] * SLOTS,
    "mixed 8-64": [8, 16, 32, 64] * (SLOTS // 4),
    "all r8": [8] * SLOTS,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--layers", type=int, default=30, help="SmolLM2-135M has 30")
    parser.add_argument("--max-rank", type=int, default=64, help="the slot tables' rank")
    parser.add_argument("--rows", type=int, default=32, help="decode rows, spread over 16 slots")
    parser.add_argument("--iters", type=int, default=15, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument(
        "--dtypes", default="float32", help="slot-table dtypes, comma-separated (x, y: float32)"
    )
    parser.add_argument(
        "--ranks",
        default="padded,real",
        help="comma-separated: padded (no per-slot ranks: every slot streams the table rank), "
        "real (the kernel gets the per-slot ranks)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    return parser.parse_args()


def step_tables(layers: int, rank: int, real: list[int]) -> list[tuple[torch.Tensor, ...]]:
    """[(lora_a, lora_b)] in float32 for every projection of every layer; rows past a slot's
    real rank are zero (as the manager leaves them)."""
    out = []
    for _ in range(layers):
        for fan_in, fan_out in PROJECTIONS.values():
            a = torch.randn(SLOTS, rank, fan_in) * fan_in**-0.5
            b = torch.randn(SLOTS, rank, fan_out) * rank**-0.5
            for s, r in enumerate(real):
                a[s, r:] = 0
                b[s, r:] = 0
            out.append((a, b))
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    op = load(Path(tempfile.gettempdir()) / "loraplex-bench-kernels")
    rows = [i * SLOTS // args.rows for i in range(args.rows)]
    dtypes, modes = args.dtypes.split(","), args.ranks.split(",")
    print(
        f"# bench/lora_op.py: {args.layers} layers x 7 projections, {args.rows} rows over "
        f"{SLOTS} slots, table rank {args.max_rank}, {torch.get_num_threads()} threads, "
        f"median of {args.iters} interleaved rounds"
    )
    print("| adapters | slot tables | ranks | ms / step | MB to read / step | GB/s |")
    print("|---|---|---|---:|---:|---:|")
    for scenario in args.scenarios.split(","):
        real = SCENARIOS[scenario]
        tables = step_tables(args.layers, args.max_rank, real)
        meta = build_lora_meta(rows, SLOTS)
        variants = []
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            cast = [(a.to(dtype), b.to(dtype)) for a, b in tables]
            for mode in modes:
                ranks = torch.tensor(real, dtype=torch.int32) if mode == "real" else None
                streamed = real if mode == "real" else [args.max_rank] * SLOTS
                nbytes = sum(
                    r * (a.shape[2] + b.shape[2]) * dtype.itemsize
                    for a, b in cast
                    for r in streamed
                )
                variants.append(
                    (dtype_name, mode, cast, dataclasses.replace(meta, slot_ranks=ranks), nbytes)
                )
        xs = [torch.randn(args.rows, a.shape[2]) for a, _ in tables]
        ys = [torch.zeros(args.rows, b.shape[2]) for _, b in tables]
        times: list[list[float]] = [[] for _ in variants]
        for i in range(args.iters + 1):
            for v, (_, _, cast, step_meta, _) in enumerate(variants):
                start = time.perf_counter()
                for x, y, (a, b) in zip(xs, ys, cast, strict=True):
                    op(y, x, a, b, step_meta)
                if i:  # the first round warms up
                    times[v].append(time.perf_counter() - start)
        for (dtype_name, mode, _, _, nbytes), measured in zip(variants, times, strict=True):
            ms = statistics.median(measured) * 1e3
            print(
                f"| {scenario} | {dtype_name} | {mode} | {ms:.2f} | {nbytes / 1e6:.0f} | "
                f"{nbytes / ms / 1e6:.1f} |"
            )
        del tables, variants


if __name__ == "__main__":
    main()
