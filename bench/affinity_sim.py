"""Adapter affinity on vs off, replayed on the real scheduler without a model (seconds, no noise).

The serving benchmark measures affinity over HTTP, where a shared 2-core machine moves
throughput by more than the policy does. This replays the same kind of load on the engine's
own host-side parts only: ``Scheduler`` (with and without ``adapter_affinity``), ``BlockManager``
and the device ``SlotCache`` (``is_resident`` reads it, as ``engine/build.py`` wires it). A
closed loop of ``clients`` keeps that many requests in flight; each draws its adapter under
Zipf popularity, its prompt and output lengths uniformly; every step "runs" by making the step's
adapters resident (counting the loads into a slot) and sampling one token per finished chunk.
What it reports per configuration, over seeds:

- steps to serve every request (each step is one forward pass: fewer is more throughput),
- slot loads (host -> device copies of an adapter) and distinct adapters per step (each one is
  streamed once a decode step, the LoRA tax; see issue 14),
- time to first token in steps, p50 and p99.

    .venv/bin/python bench/affinity_sim.py                     # the table in bench/NOTES.md
    .venv/bin/python bench/affinity_sim.py --clients 16 --max-num-seqs 64 --max-loras 4
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass, fields

from stats import percentile
from workload import zipf_weights

from loraplex.config import SchedulerConfig
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.scheduler import Scheduler
from loraplex.lora.slot_cache import SlotCache


@dataclass(frozen=True)
class Load:
    """The closed loop: ``clients`` in flight, ``requests`` in all, Zipf(``zipf``) adapters."""

    adapters: int
    clients: int = 32
    requests: int = 400
    zipf: float = 1.0
    prompt: tuple[int, int] = (16, 48)
    output: tuple[int, int] = (8, 16)


@dataclass(frozen=True)
class Outcome:
    steps: int
    loads: int
    distinct_per_step: float
    ttft_p50: float
    ttft_p99: float


def simulate(load: Load, config: SchedulerConfig, max_loras: int, seed: int) -> Outcome:
    """Serve ``load`` with ``config`` and ``max_loras`` slots; one seed's outcome."""
    rng = random.Random(seed)
    weights = zipf_weights(load.adapters, load.zipf)
    names = [f"z{i}" for i in range(load.adapters)]
    slots = SlotCache(max_loras)
    sched = Scheduler(
        config, BlockManager(4096, 16, enable_prefix_caching=False), max_loras, 2048,
        is_resident=lambda key: slots.lookup(key) is not None,
    )  # fmt: skip
    sent_at: dict[int, int] = {}
    ttft: list[float] = []
    distinct: list[int] = []
    loads = steps = 0

    def send() -> None:
        prompt = list(range(rng.randint(*load.prompt)))
        params = SamplingParams(max_tokens=rng.randint(*load.output))
        seq = Sequence(f"r{len(sent_at)}", prompt, params, rng.choices(names, weights)[0])
        sent_at[seq.seq_id] = steps
        sched.add(seq)

    for _ in range(min(load.clients, load.requests)):
        send()
    while sched.has_unfinished():
        out = sched.schedule()
        keys = out.adapter_keys()
        loads += len(slots.acquire(keys)[1])
        distinct.append(len(keys))
        sched.after_step(out)
        steps += 1
        for s in out.scheduled:
            if not s.sample:
                continue
            if s.seq.num_output_tokens == 0:
                ttft.append(steps - sent_at[s.seq.seq_id])
            s.seq.append_token(0)
            if s.seq.num_output_tokens >= s.seq.params.max_tokens:
                sched.finish(s.seq, "length")
                if len(sent_at) < load.requests:
                    send()
    return Outcome(
        steps, loads, statistics.fmean(distinct), percentile(ttft, 50), percentile(ttft, 99)
    )


def table(counts: list[int], clients: int, max_num_seqs: int, max_loras: int, seeds: int) -> str:
    """One Markdown row per (adapters, policy): means over ``seeds``; on/off ratios after."""
    policies = {
        "off": SchedulerConfig(max_num_seqs=max_num_seqs, adapter_affinity=False),
        "on, max skips 8": SchedulerConfig(max_num_seqs=max_num_seqs, adapter_affinity=True),
        "on, max skips 32": SchedulerConfig(
            max_num_seqs=max_num_seqs, adapter_affinity=True, adapter_affinity_max_skips=32
        ),
    }
    lines = [
        f"closed loop of {clients}, --max-num-seqs {max_num_seqs}, --max-loras {max_loras}, "
        f"Zipf 1, prompts 16-48, outputs 8-16, 400 requests, means of {seeds} seeds",
        "",
        "| adapters | affinity | steps | slot loads | distinct adapters / step "
        "| TTFT p50 (steps) | TTFT p99 (steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        load = Load(n, clients)
        for name, config in policies.items():
            runs = [simulate(load, config, max_loras, seed) for seed in range(seeds)]
            mean = {
                f.name: statistics.fmean(getattr(r, f.name) for r in runs) for f in fields(Outcome)
            }
            lines.append(
                f"| {n} | {name} | {mean['steps']:.0f} | {mean['loads']:.0f} | "
                f"{mean['distinct_per_step']:.1f} | {mean['ttft_p50']:.0f} | "
                f"{mean['ttft_p99']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="64,512,1000", help="Zipf populations")
    parser.add_argument("--clients", type=int, default=32, help="requests in flight")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="seats a step")
    parser.add_argument("--max-loras", type=int, default=16, help="device slots")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.adapters.split(",")]
    text = table(counts, args.clients, args.max_num_seqs, args.max_loras, args.seeds)
    print(text)
    return text


if __name__ == "__main__":
    main()
