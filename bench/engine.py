"""Engine throughput: loraplex against HF ``generate`` and PEFT mixed-adapter ``generate``.

One run, one table, the same requests for every system (default model, greedy, every request
generates exactly ``--max-tokens`` tokens):

  (a) HF ``generate``: all requests as one left-padded static batch
  (b) PEFT ``generate(adapter_names=...)``: same batch, 16 adapters r16 on all 7 projections,
      request i uses adapter i % 16
  (c) loraplex, base model, over HTTP: every request sent at once to ``/v1/completions``
  (d) loraplex, same 16 adapters, over HTTP: request i names adapter i % 16
  (e) loraplex, one adapter pre-merged (a dedicated tenant), over HTTP
  (r) reference, not a system: HF decode forwards alone over the cached batch (no prefill, no
      ``generate`` loop): (r)/(a) is about the most (c)/(a) can reach on this hardware.

Every system is set up and warmed up first; then each of ``--rounds`` rounds runs every system
once, one at a time. Medians over rounds: the machine's drift hits every system alike.

    .venv/bin/python bench/engine.py            # 32 requests x 64 tokens, float32, 3 rounds
    .venv/bin/python bench/engine.py --quick    # smoke run: 4 requests x 8 tokens, 1 round
    .venv/bin/python bench/engine.py --systems cd --lora-dtype bfloat16 --max-lora-rank 64
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import common  # bench/ is a folder of scripts: run as a file, its folder is on sys.path
import loraplex_http

Measure = Callable[[], "common.Measurement"]  # one timed run of a system over all requests

NUM_ADAPTERS, LORA_RANK, LORA_ALPHA = 16, 16, 32

SYSTEMS = {
    "a": "(a) HF generate",
    "b": "(b) PEFT generate",
    "c": "(c) loraplex base, HTTP",
    "d": "(d) loraplex 16 adapters, HTTP",
    "e": "(e) loraplex 1 adapter pre-merged, HTTP",
    "r": "(r) reference: bare HF decode forward",
}

# (numerator, denominator, target): ratios of tokens/s the design asks for (None: reference).
TARGETS = (
    ("c", "a", 3.0),
    ("d", "c", 0.85),
    ("d", "b", 3.0),
    ("e", "c", 0.95),  # a pre-merged tenant runs at base speed (within 5%)
    ("r", "a", None),  # the decode-step ceiling, against HF generate
    ("c", "r", None),  # loraplex (prefill included) against that ceiling
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests, all sent at once")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every system; default: all cores (os.cpu_count())",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed runs per system, interleaved (a round runs each system once); "
        "the table shows each system's median",
    )
    parser.add_argument(
        "--systems",
        default="".join(SYSTEMS),
        help="the systems to run, by letter: e.g. acder skips PEFT (the slowest), cde gives "
        "more rounds of the loraplex ratios in the same time",
    )
    parser.add_argument(
        "--lora-dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="the loraplex servers' --lora-dtype (slot tables)",
    )
    parser.add_argument(
        "--max-lora-rank",
        type=int,
        default=LORA_RANK,
        help=f"the loraplex servers' --max-lora-rank (the adapters stay r{LORA_RANK})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --concurrency 4 --max-tokens 8"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.max_tokens, args.rounds = 4, 8, 1
    if not set(args.systems) <= set(SYSTEMS):
        parser.error(f"--systems takes letters of {''.join(SYSTEMS)}")
    if min(args.concurrency, args.max_tokens, args.rounds, args.threads or 1) < 1:
        parser.error("--concurrency, --max-tokens, --rounds and --threads must be positive")
    return args


@contextmanager
def hf_system(
    model_dir: Path, prompts: list[str], max_tokens: int, dtype: str
) -> Iterator[Measure]:
    """(a): one ``generate`` over the static batch per call."""
    model, tokenizer = common.load_hf_model(model_dir, dtype)
    common.hf_generate(model, tokenizer, prompts, 2, "warm-up")
    yield lambda: common.hf_generate(model, tokenizer, prompts, max_tokens, SYSTEMS["a"])


@contextmanager
def bare_decode_system(
    model_dir: Path, prompts: list[str], max_tokens: int, dtype: str
) -> Iterator[Measure]:
    """(r): per call, ``max_tokens`` one-token forwards of the batch (its prefill not timed)."""
    model, tokenizer = common.load_hf_model(model_dir, dtype)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)

    def measure() -> common.Measurement:
        seconds = common.timed_decode_steps(
            model, inputs["input_ids"], inputs["attention_mask"], max_tokens
        )
        return common.Measurement(SYSTEMS["r"], len(prompts) * max_tokens, seconds, [])

    yield measure


@contextmanager
def peft_system(
    model_dir: Path,
    adapters_dir: Path,
    names: list[str],
    prompts: list[str],
    max_tokens: int,
    dtype: str,
) -> Iterator[Measure]:
    """(b): PEFT ``generate`` with request i on adapter ``names[i % n]``."""
    from peft import PeftModel

    base, tokenizer = common.load_hf_model(model_dir, dtype)
    model = PeftModel.from_pretrained(base, adapters_dir / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters_dir / name, adapter_name=name)
    model.eval()
    per_request = [names[i % len(names)] for i in range(len(prompts))]
    common.hf_generate(model, tokenizer, prompts, 2, "warm-up", adapter_names=per_request)
    yield lambda: common.hf_generate(
        model, tokenizer, prompts, max_tokens, SYSTEMS["b"], adapter_names=per_request
    )


@contextmanager
def loraplex_system(
    adapters_dir: Path | None,
    names: list[str] | None,
    prompts: list[str],
    max_tokens: int,
    dtype: str,
    system: str,
    merged: tuple[str, ...] = (),
    max_lora_rank: int = LORA_RANK,
    lora_dtype: str = "auto",
) -> Iterator[Measure]:
    """A live server; ``names`` None: base model for every request; else request i names
    ``names[i % n]``. ``merged`` adapters are pre-merged at start (dedicated tenants)."""
    config = loraplex_http.loraplex_config(
        dtype,
        adapters_dir,
        max_loras=NUM_ADAPTERS,
        max_lora_rank=max_lora_rank,
        max_num_seqs=len(prompts),
    )
    lora = dataclasses.replace(config.lora, merged_adapters=merged, lora_dtype=lora_dtype)
    config = dataclasses.replace(config, lora=lora)
    with loraplex_http.live_server(config) as url:
        import httpx

        served = httpx.get(f"{url}/v1/models").json()["data"]
        base_name = next(m["id"] for m in served if m.get("parent") is None)
        models = [names[i % len(names)] if names else base_name for i in range(len(prompts))]
        missing = sorted(set(models) - {m["id"] for m in served})
        if missing:
            raise RuntimeError(f"{system}: the server does not serve {missing}")
        # Warm every adapter once (PEFT has them all loaded too): the timed rounds measure
        # serving, not the first load from disk.
        distinct = sorted(set(models))
        loraplex_http.http_completions(url, distinct, prompts[: len(distinct)], 2, "warm-up")
        yield lambda: loraplex_http.http_completions(url, models, prompts, max_tokens, system)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.setup(args.threads)
    import torch
    from transformers import AutoTokenizer

    model_dir = common.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = common.chat_prompts(tokenizer, args.concurrency)
    prompt_tokens = [len(tokenizer(p).input_ids) for p in prompts]
    n, max_tokens, dtype = args.concurrency, args.max_tokens, args.dtype
    print(
        f"# bench/engine.py: {model_dir.name}, {dtype}, {n} requests x {max_tokens} new tokens, "
        f"prompts {min(prompt_tokens)}-{max(prompt_tokens)} tokens, "
        f"torch threads {torch.get_num_threads()}, loraplex --lora-dtype {args.lora_dtype} "
        f"--max-lora-rank {args.max_lora_rank}",
        flush=True,
    )
    loraplex_server = functools.partial(
        loraplex_system, max_lora_rank=args.max_lora_rank, lora_dtype=args.lora_dtype
    )

    results: dict[str, list[common.Measurement]] = {}
    with common.temp_dir("loraplex-bench-adapters-") as tmp:
        adapters_dir = Path(tmp)
        began = time.perf_counter()
        names = common.make_adapters(
            model_dir, adapters_dir, NUM_ADAPTERS, rank=LORA_RANK, alpha=LORA_ALPHA
        )
        print(
            f"created {len(names)} adapters (r{LORA_RANK}, alpha {LORA_ALPHA}, "
            f"{len(common.LORA_TARGETS)} projections) in {time.perf_counter() - began:.1f} s",
            flush=True,
        )

        args_of = {
            "r": (bare_decode_system, model_dir, prompts, max_tokens, dtype),
            "a": (hf_system, model_dir, prompts, max_tokens, dtype),
            "b": (peft_system, model_dir, adapters_dir, names, prompts, max_tokens, dtype),
            "c": (loraplex_server, None, None, prompts, max_tokens, dtype, SYSTEMS["c"]),
            "d": (loraplex_server, adapters_dir, names, prompts, max_tokens, dtype, SYSTEMS["d"]),
            "e": (
                *(loraplex_server, adapters_dir, names[:1], prompts, max_tokens, dtype),
                *(SYSTEMS["e"], tuple(names[:1])),
            ),
        }
        args_of = {key: value for key, value in args_of.items() if key in args.systems}
        with ExitStack() as stack:
            measures = {}
            for key, (system, *system_args) in args_of.items():
                measures[key] = stack.enter_context(system(*system_args))
            # Round k starts at system k: no system always runs right after the same one.
            keys = list(measures)
            for round_ in range(1, args.rounds + 1):
                shift = (round_ - 1) % len(keys)
                for key in keys[shift:] + keys[:shift]:
                    m = measures[key]()
                    results.setdefault(key, []).append(m)
                    took = f"{m.tokens} tokens in {m.seconds:.2f} s = {m.tokens_per_s:.1f} tok/s"
                    print(f"round {round_}: {m.system}: {took}", flush=True)

    print()
    print(report(results))


def median_run(runs: list[common.Measurement]) -> common.Measurement:
    """The run with the median tokens/s (the lower middle one for an even count)."""
    return sorted(runs, key=lambda m: m.tokens_per_s)[(len(runs) - 1) // 2]


def report(results: dict[str, list[common.Measurement]]) -> str:
    """The table of systems (median run of each), then the target ratios with met/missed."""
    references = {"c": "a", "d": "b"}  # same requests, same weights: texts should agree
    medians = {key: median_run(runs) for key, runs in results.items()}
    rows = []
    for key in SYSTEMS:
        m = medians.get(key)
        if m is None:
            rows.append([SYSTEMS[key], "skipped", "-", "-", "-"])
            continue
        speeds = [run.tokens_per_s for run in results[key]]
        spread = f"{min(speeds):.1f}-{max(speeds):.1f}"
        ref = medians.get(references.get(key, ""))
        rows.append(
            [m.system, m.tokens, f"{m.tokens_per_s:.1f}", spread, common.same_texts(m, ref)]
        )
    table = common.markdown_table(
        ["system", "tokens", "tok/s (median)", "tok/s (all rounds)", "same text as (a)/(b)"],
        rows,
    )
    ratio_rows = []
    for num, den, target in TARGETS:
        label, wanted = f"({num})/({den})", "-" if target is None else f">= {target:g}"
        if num not in medians or den not in medians:
            ratio_rows.append([label, wanted, "-", "skipped"])
            continue
        ratio = statistics.median(
            a.tokens_per_s / b.tokens_per_s for a, b in zip(results[num], results[den], strict=True)
        )
        status = "reference" if target is None else "met" if ratio >= target else "missed"
        ratio_rows.append([label, wanted, f"{ratio:.2f}", status])
    ratios = common.markdown_table(["ratio", "target", "median of rounds", "status"], ratio_rows)
    return f"{table}\n\n{ratios}"


if __name__ == "__main__":
    main()
