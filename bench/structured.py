"""Structured outputs' cost: constrained and free requests in the same steps, against all free.

A live ``LLMEngine`` in-process (no HTTP) on the default model (or ``--model``); every round
runs the same ``--concurrency`` chat prompts three ways, each request generating
``--max-tokens`` tokens (EOS ignored; a constrained request's schema is longer than that, so
every row lives through every step):

  free   every request unconstrained;
  mixed  every other request constrained by a JSON schema (the free half are the same
         requests as in ``free``, so their tokens must be identical);
  all    every request constrained (the per-step mask cost at ``--concurrency`` rows).

Requests rotate over the base model and the demo adapters (``upper``, ``json``). Reported:
each run's median decode step, the free rows' tokens/s, the time the step spends in the grammar
mask (fill every constrained row's bitmask, one batched apply), the compile time of the schema
(cold, then a cache hit) and whether the free rows' text is unchanged.

    .venv/bin/python bench/structured.py             # 32 requests x 64 tokens, 3 rounds
    .venv/bin/python bench/structured.py --quick     # 8 requests x 16 tokens, 1 round
    .venv/bin/python bench/structured.py --device cuda --model DIR --load-format dummy
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import common

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "[0-9]{5}"},
            },
            "required": ["city", "zip"],
        },
        "tags": {"type": "array", "items": {"enum": ["new", "vip", "churned"]}},
    },
    "required": ["name", "age", "email", "address", "tags"],
}
# Long enough that no row completes it within --max-tokens: every row lives every step.
PEOPLE = {"type": "array", "items": PERSON, "minItems": 1000}
RUNS = ("free", "mixed", "all")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--load-format", default="auto", help="dummy: random weights")
    parser.add_argument("--adapters-dir", default="adapters", help="'' for base-model rows only")
    parser.add_argument("--quick", action="store_true", help="8 requests x 16 tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.max_tokens, args.rounds = 8, 16, 1
    return args


def build(args: argparse.Namespace, model_dir: Path) -> tuple[Any, Any]:
    """The engine and its grammar service."""
    from loraplex.config import Config, LoRAConfig, ModelConfig, SchedulerConfig
    from loraplex.engine.build import build_engine
    from loraplex.engine.constraints import GrammarService

    config = Config(
        model=ModelConfig(
            model=str(model_dir), device=args.device, load_format=args.load_format,
            dtype="float32" if args.device == "cpu" else "bfloat16",
        ),
        scheduler=SchedulerConfig(max_num_seqs=max(64, args.concurrency)),
        lora=LoRAConfig(max_loras=4, max_lora_rank=16, adapters_dir=args.adapters_dir or None),
    )  # fmt: skip
    engine = build_engine(config)
    grammars = GrammarService(
        engine.tokenizer, engine.vocab_size, engine.eos_token_ids, config.structured
    )
    return engine, grammars


def run_once(
    engine: Any, grammar: Any, spec: Any, prompts: list, names: list, args, run: str, tag: str
) -> dict:
    """One run: its decode steps' and mask calls' times (ms), each request's tokens."""
    from loraplex.engine.request.params import SamplingParams

    free = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    constrained = SamplingParams(max_tokens=args.max_tokens, temperature=0, constraint=spec)
    masks: list[float] = []
    inner = engine.sampler.masks.apply

    def timed(logits: Any, matchers: list) -> None:
        began = time.perf_counter()
        inner(logits, matchers)
        if any(m is not None for m in matchers):
            if logits.is_cuda:
                import torch

                torch.cuda.synchronize()
            masks.append((time.perf_counter() - began) * 1e3)

    engine.sampler.masks.apply = timed
    tokens: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        on = run == "all" or (run == "mixed" and i % 2 == 1)
        parent = engine.prepare(
            f"{tag}-{i}", [prompt], constrained if on else free, names[i % len(names)],
            cache_salt=tag, grammar=grammar if on else None,
        )  # fmt: skip
        engine.submit(parent)
        tokens[f"{tag}-{i}"] = []
    steps: list[float] = []
    try:
        while engine.has_unfinished():
            began = time.perf_counter()
            outputs = engine.step()
            elapsed = (time.perf_counter() - began) * 1e3
            decode = len(outputs) == len(prompts) and all(tokens[o.request_id] for o in outputs)
            if decode:
                steps.append(elapsed)  # a decode step of every row (none prefilling)
            for out in outputs:
                tokens[out.request_id] += out.token_ids
    finally:
        engine.sampler.masks.apply = inner
    return {
        "steps": steps,
        "masks": masks,
        "tokens": [tokens[f"{tag}-{i}"] for i in range(len(prompts))],
    }


def main() -> None:
    args = parse_args()
    common.setup(args.threads)
    import torch
    from transformers import AutoTokenizer

    from loraplex.engine.constraints import spec as specs

    model_dir = Path(args.model) if args.model else common.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer(p).input_ids for p in common.chat_prompts(tokenizer, args.concurrency)]
    engine, grammars = build(args, model_dir)
    names = [None, *(card.name for card in engine.registry.cards())][:3]
    began = time.perf_counter()
    person = grammars.compile_now(specs.json_schema(PERSON, "bench"))
    cold = (time.perf_counter() - began) * 1e3
    began = time.perf_counter()
    assert grammars.compile_now(specs.json_schema(json.dumps(PERSON, indent=1), "bench")) is person
    hit = (time.perf_counter() - began) * 1e3
    spec = specs.json_schema(PEOPLE, "bench")
    grammar = grammars.compile_now(spec)
    for run in RUNS:  # warm-up: adapters loaded, first-use costs paid
        run_once(
            engine, grammar, spec, prompts, names, argparse.Namespace(max_tokens=2), run, f"w{run}"
        )
    results: dict[str, dict[str, list]] = {
        run: {"steps": [], "masks": [], "tokens": []} for run in RUNS
    }
    for r in range(args.rounds):
        order = RUNS[r % 3 :] + RUNS[: r % 3]  # each round starts one run later
        for run in order:
            got = run_once(engine, grammar, spec, prompts, names, args, run, f"r{r}{run}")
            for key in ("steps", "masks"):
                results[run][key] += got[key]
            results[run]["tokens"].append(got["tokens"])
    free_rows = range(0, args.concurrency, 2)
    same = all(
        free[i] == mixed[i]
        for free, mixed in zip(results["free"]["tokens"], results["mixed"]["tokens"], strict=True)
        for i in free_rows
    )
    print(
        f"# bench/structured.py: {model_dir.name} on {args.device}, {args.concurrency} requests x "
        f"{args.max_tokens} tokens, {args.rounds} rounds, torch threads {torch.get_num_threads()}, "
        f"rows over {names}; schema compile {cold:.1f} ms cold, {hit:.3f} ms cached\n"
    )
    base_step = statistics.median(results["free"]["steps"])
    rows = []
    for run in RUNS:
        step = statistics.median(results[run]["steps"])
        mask = statistics.median(results[run]["masks"]) if results[run]["masks"] else 0.0
        constrained = {"free": 0, "mixed": len(prompts) // 2, "all": len(prompts)}[run]
        rows.append([
            run, constrained, len(results[run]["steps"]), f"{step:.1f}", f"{mask:.2f}",
            f"{1e3 / step:.1f}", f"{base_step / step:.3f}",
        ])  # fmt: skip
    header = ["run", "constrained rows", "decode steps", "step ms (median)", "mask ms (median)",
              "tok/s per row", "free-row speed vs all-free"]  # fmt: skip
    print(common.markdown_table(header, rows))
    print(f"\nfree rows' tokens identical next to constrained rows: {same}")


if __name__ == "__main__":
    main()
