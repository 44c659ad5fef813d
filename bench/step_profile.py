"""Where an engine step's time goes: the engine in-process (no HTTP), prefill and decode apart.

Every variant is a live ``LLMEngine`` on the default model; each round sends the same
``--concurrency`` chat prompts (request ``i`` names adapter ``i mod n``, or none), each
generating ``--max-tokens`` tokens with EOS ignored, and times every ``step()`` by phase:
scheduling, packing the batch (``build_batch``, or filling the decode buffers), the forward
(and within it the ``add_lora`` calls), sampling
and output processing. A step that feeds more than one token of some sequence is a prefill
step; the others are decode steps. The bare HF decode forward at the same batch (prefill
untimed, as the serving benchmark's row (r)) runs in the same rounds.

    .venv/bin/python bench/step_profile.py                       # base, 16 and 64 adapters
    .venv/bin/python bench/step_profile.py --adapters 0,16 --lora-dtype float16
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import common
from peers import padded_batch

PHASES = ("schedule", "batch", "forward", "add_lora", "sample", "process")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--adapters", default="0,16,64", help="adapter counts, comma-separated")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--lora-dtype", default="auto", help="the engines' --lora-dtype")
    parser.add_argument("--no-huge-pages", action="store_true", help="the engines' --no-huge-pages")
    return parser.parse_args()


class PhaseTimer:
    """Wraps callables so each call's wall time is added to ``current[phase]``."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.results: dict[str, Any] = {}  # each phase's last return value

    def wrap(self, owner: Any, attribute: str, phase: str) -> None:
        inner = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                self.results[phase] = result = inner(*args, **kwargs)
                return result
            finally:
                self.current[phase] += time.perf_counter() - began

        setattr(owner, attribute, timed)


def instrument(engine: Any, timer: PhaseTimer) -> None:
    import loraplex.engine.runner.model_runner as model_runner

    timer.wrap(engine.scheduler, "schedule", "schedule")
    timer.wrap(model_runner, "build_batch", "batch")
    # Both paths of runner.execute: build_batch + forward, or the decode buffers' run.
    timer.wrap(engine.runner, "run_model", "forward")
    timer.wrap(engine.runner.decode, "run", "decode run")
    timer.wrap(engine.runner.lora.context, "add_lora", "add_lora")
    timer.wrap(engine.sampler, "sample", "sample")
    timer.wrap(engine, "_process", "process")


def build(model_dir: Path, store: Path, slots: int, args: argparse.Namespace) -> Any:
    from loraplex.config import Config, LoRAConfig, ModelConfig, SchedulerConfig
    from loraplex.engine.build import build_engine

    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), huge_pages=not args.no_huge_pages),
            scheduler=SchedulerConfig(max_num_seqs=max(64, args.concurrency)),
            lora=LoRAConfig(
                max_loras=max(1, slots),
                max_lora_rank=16,
                adapters_dir=str(store),
                lora_dtype=args.lora_dtype,
            ),
        )
    )


def run_round(
    engine: Any,
    timer: PhaseTimer,
    prompts: list[list[int]],
    names: list[str],
    max_tokens: int,
    tag: str,
) -> dict[str, list[dict[str, float]]]:
    """Every step's phase times (ms), by kind: ``prefill`` or ``decode``."""
    from loraplex.engine.request.params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        adapter = names[i % len(names)] if names else None
        engine.add_request(f"{tag}-{i}", prompt, params, adapter, cache_salt=tag)
    steps: dict[str, list[dict[str, float]]] = defaultdict(list)
    while engine.has_unfinished():
        timer.current.clear()
        began = time.perf_counter()
        engine.step()
        total = time.perf_counter() - began
        if not timer.current.get("forward"):
            continue  # nothing ran (adapters loading)
        prefill = any(s.num_new_tokens > 1 for s in timer.results["schedule"].scheduled)
        row = {phase: timer.current.get(phase, 0.0) * 1e3 for phase in PHASES}
        if timer.current.get("decode run"):  # the buffers' fill counts as packing the batch
            row["batch"] += (timer.current["decode run"] - timer.current["forward"]) * 1e3
        row["step"] = total * 1e3
        steps["prefill" if prefill else "decode"].append(row)
    return steps  # fmt: skip


def main() -> None:
    args = parse_args()
    common.setup(args.threads)
    import torch
    from transformers import AutoTokenizer

    counts = [int(n) for n in args.adapters.split(",")]
    model_dir = common.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer(p).input_ids for p in common.chat_prompts(tokenizer, args.concurrency)]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="loraplex-step-profile-") as tmp:
        store = Path(tmp)
        names = common.make_adapters(model_dir, store, max(counts), rank=16, alpha=32)
        engines = {}
        for n in counts:
            timer = PhaseTimer()
            engine = build(model_dir, store, min(n, args.concurrency), args)
            instrument(engine, timer)
            engines[n] = (engine, timer)
            run_round(engine, timer, prompts, names[:n], 2, f"warm{n}")  # loads every adapter
        bare, _ = common.load_hf_model(model_dir, "float32")
        ids, mask = padded_batch(prompts, tokenizer.pad_token_id)
        bare_steps: list[float] = []
        for r in range(args.rounds):
            for n, (engine, timer) in engines.items():
                steps = run_round(engine, timer, prompts, names[:n], args.max_tokens, f"r{r}n{n}")
                for kind, rows in steps.items():
                    results.setdefault(f"{n}", {}).setdefault(kind, []).extend(rows)
            ends: list[float] = []
            common.timed_decode_steps(bare, ids, mask, args.max_tokens, ends)
            bare_steps += [(b - a) * 1e3 for a, b in itertools.pairwise(ends)]
    print(
        f"# bench/step_profile.py: {model_dir.name}, {args.concurrency} requests x "
        f"{args.max_tokens} tokens, {args.rounds} rounds, torch threads "
        f"{torch.get_num_threads()}, --lora-dtype {args.lora_dtype}, huge pages "
        f"{'off' if args.no_huge_pages else 'on'}; median ms per step\n"
    )
    header = ["adapters", "steps", "kind", "step", *PHASES, "rest of forward", "other host"]
    rows = []
    for n, kinds in results.items():
        for kind in ("prefill", "decode"):
            steps = kinds.get(kind, [])
            if not steps:
                continue
            med = {k: statistics.median(s[k] for s in steps) for k in ("step", *PHASES)}
            host = med["step"] - sum(med[p] for p in PHASES if p != "add_lora")
            cells = [n, len(steps), kind, *(f"{med[k]:.1f}" for k in ("step", *PHASES))]
            rows.append([*cells, f"{med['forward'] - med['add_lora']:.1f}", f"{host:.1f}"])
    rows.append(["(r) bare HF", len(bare_steps), "decode", f"{statistics.median(bare_steps):.1f}",
                 *["-"] * (len(PHASES) + 2)])  # fmt: skip
    print(common.markdown_table(header, rows))


if __name__ == "__main__":
    main()
