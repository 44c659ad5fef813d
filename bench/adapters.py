"""Adapter lifecycle benchmark: load latencies per adapter size, and throughput as the number of
registered adapters grows (8, 64, 512) under Zipf popularity with 16 device slots.

    .venv/bin/python bench/adapters.py [--quick]

Target: tokens/s with 512 registered adapters >= 0.85 x tokens/s with 8.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from adapter_store import write_adapter

from loraplex.adapters.weights import load_adapter
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

ATTENTION = ("q_proj", "v_proj")


def engine_for(
    store: Path, max_loras: int, max_rank: int, dtype: str, prefix_caching: bool = True
) -> LLMEngine:
    return build_engine(
        Config(
            model=ModelConfig(dtype=dtype, max_model_len=512),
            cache=CacheConfig(kv_cache_memory_mb=256, enable_prefix_caching=prefix_caching),
            scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512),
            lora=LoRAConfig(max_loras=max_loras, max_lora_rank=max_rank, adapters_dir=str(store)),
        )
    )


def load_latencies(model_dir: Path, root: Path, dtype: str) -> list[list[object]]:
    """Cold: store (disk) -> host memory -> device slot. Hot swap: host memory -> slot."""
    rows = []
    sizes = [(4, ATTENTION), (16, ATTENTION), (16, common.LORA_TARGETS), (64, common.LORA_TARGETS)]
    for rank, targets in sizes:
        store = root / f"sizes-{rank}-{len(targets)}"
        write_adapter(store / "x", model_dir, rank, targets, seed=rank)
        engine = engine_for(store, 2, 64, dtype)
        mb = (store / "x" / "adapter_model.safetensors").stat().st_size / 2**20
        cold, hot = [], []
        shapes = engine.runner.lora.module_shapes()
        for _ in range(5):
            start = time.perf_counter()
            adapter = load_adapter("x", store / "x", shapes, engine.runner.dtype)
            engine.runner.lora.load_slot(0, adapter)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine.runner.lora.load_slot(1, adapter)
            hot.append(time.perf_counter() - start)
        label = f"r{rank} x {len(targets)} modules"
        rows.append([label, f"{mb:.1f}", f"{min(cold) * 1e3:.1f}", f"{min(hot) * 1e3:.1f}"])
        del engine
        common.free_memory()
    return rows


def throughput(store: Path, names: list[str], args: argparse.Namespace, prompts) -> float:
    engine = engine_for(store, 16, 8, args.dtype, args.prefix_caching)
    rng = random.Random(0)
    weights = [1 / (i + 1) ** args.zipf for i in range(len(names))]
    chosen = rng.choices(names, weights=weights, k=args.requests)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    tokens = [engine.tokenizer(p).input_ids for p in prompts]
    engine.add_request("warm", tokens[0], SamplingParams(max_tokens=2), None)
    while engine.has_unfinished():
        engine.step()
    start = time.perf_counter()
    for i, name in enumerate(chosen):
        engine.add_request(str(i), tokens[i % len(tokens)], params, name)
    generated = 0
    while engine.has_unfinished():
        outputs = engine.step()
        if errors := [o.error for o in outputs if o.error is not None]:
            raise errors[0]
        generated += sum(len(o.token_ids) for o in outputs)
    seconds = time.perf_counter() - start
    assert generated == args.requests * args.max_tokens
    del engine
    common.free_memory()
    return generated / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="small settings for a smoke run")
    parser.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="serve without prefix caching (it favors few adapters: more prompts share a prefix)",
    )
    args = parser.parse_args()
    if args.quick:
        args.counts, args.requests, args.max_tokens = [8, 64], 32, 4
    common.setup()
    model_dir = common.default_model_dir()
    tokenizer_prompts = common.chat_prompts(
        __import__("transformers").AutoTokenizer.from_pretrained(model_dir), 32
    )
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as tmp:
        root = Path(tmp)
        print(common.markdown_table(
            ["adapter", "MiB (fp16)", "cold load store->slot ms", "hot swap host->slot ms"],
            load_latencies(model_dir, root, args.dtype),
        ))  # fmt: skip
        rows, results = [], {}
        for count in args.counts:
            store = root / f"store-{count}"
            names = [f"z{i:03d}" for i in range(count)]
            for i, name in enumerate(names):
                write_adapter(store / name, model_dir, 8, ATTENTION, seed=1000 + i)
            results[count] = throughput(store, names, args, tokenizer_prompts)
            rows.append(
                [count, f"{results[count]:.1f}", f"{results[count] / results[args.counts[0]]:.2f}"]
            )
        print()
        print(common.markdown_table(["registered adapters", "tokens/s", "vs first"], rows))
        first, last = results[args.counts[0]], results[args.counts[-1]]
        verdict = "met" if last >= 0.85 * first else "missed"
        print(f"\ntarget: {args.counts[-1]} adapters >= 0.85 x {args.counts[0]}: "
              f"{last / first:.2f} ({verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
