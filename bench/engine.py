"""Engine throughput: loraplex against HF ``generate`` and PEFT mixed-adapter ``generate``.

One run, one table, the same requests for every system (default model, greedy, every request
generates exactly ``--max-tokens`` tokens):

  (a) HF ``generate``: all requests as one left-padded static batch
  (b) PEFT ``generate(adapter_names=...)``: same batch, 16 adapters r16 on all 7 projections,
      request i uses adapter i % 16
  (c) loraplex, base model, over HTTP: every request sent at once to ``/v1/completions``
  (d) loraplex, same 16 adapters, over HTTP: request i names adapter i % 16
  (e) loraplex, one adapter pre-merged (a dedicated tenant), over HTTP
  (r) reference, not a system: HF forward steps alone, one decode token per row over the
      cached batch, no prefill, no ``generate`` loop. It is what the step's arithmetic costs
      on this machine at this batch size, so (r)/(a) is about the most (c)/(a) can reach
      without changing that arithmetic (fewer FLOPs per token, other kernels or hardware).

Systems run one after another in this process (never two at once), each after a warm-up.

    .venv/bin/python bench/engine.py            # 32 requests x 64 tokens, float32
    .venv/bin/python bench/engine.py --quick    # smoke run: 4 requests x 8 tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import common  # bench/ is a folder of scripts: run as a file, its folder is on sys.path
import loraplex_http

NUM_ADAPTERS = 16
LORA_RANK = 16
LORA_ALPHA = 32

SYSTEMS = {
    "a": "(a) HF generate",
    "b": "(b) PEFT generate",
    "c": "(c) loraplex base, HTTP",
    "d": "(d) loraplex 16 adapters, HTTP",
    "e": "(e) loraplex 1 adapter pre-merged, HTTP",
    "r": "(r) reference: bare HF decode forward",
}

# (numerator, denominator, target): the ratios of tokens/s the design asks for; None: shown
# for reference only.
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
    parser.add_argument("--skip-peft", action="store_true", help="don't run (b)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --concurrency 4 --max-tokens 8"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.max_tokens = 4, 8
    if args.concurrency < 1 or args.max_tokens < 1 or (args.threads or 1) < 1:
        parser.error("--concurrency, --max-tokens and --threads must be positive")
    return args


def run_hf(model_dir: Path, prompts: list[str], max_tokens: int, dtype: str) -> common.Measurement:
    model, tokenizer = common.load_hf_model(model_dir, dtype)
    common.hf_generate(model, tokenizer, prompts, 2, "warm-up")
    result = common.hf_generate(model, tokenizer, prompts, max_tokens, SYSTEMS["a"])
    del model, tokenizer
    common.free_memory()
    return result


def run_bare_decode(
    model_dir: Path, prompts: list[str], max_tokens: int, dtype: str
) -> common.Measurement:
    """(r): time ``max_tokens`` one-token forwards of the whole batch over its KV cache."""
    import torch

    model, tokenizer = common.load_hf_model(model_dir, dtype)
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True)  # the prefill: not timed
        cache, mask = out.cache, inputs["attention_mask"]
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(max_tokens):
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        seconds = time.perf_counter() - start
    del model, tokenizer, cache, out
    common.free_memory()
    return common.Measurement(SYSTEMS["r"], len(prompts) * max_tokens, seconds, [])


def run_peft(
    model_dir: Path,
    adapters_dir: Path,
    names: list[str],
    prompts: list[str],
    max_tokens: int,
    dtype: str,
) -> common.Measurement:
    from peft import PeftModel

    base, tokenizer = common.load_hf_model(model_dir, dtype)
    model = PeftModel.from_pretrained(base, adapters_dir / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters_dir / name, adapter_name=name)
    model.eval()
    per_request = [names[i % len(names)] for i in range(len(prompts))]
    common.hf_generate(model, tokenizer, prompts, 2, "warm-up", adapter_names=per_request)
    result = common.hf_generate(
        model,
        tokenizer,
        prompts,
        max_tokens,
        SYSTEMS["b"],
        adapter_names=per_request,
    )
    del model, base, tokenizer
    common.free_memory()
    return result


def run_loraplex(
    adapters_dir: Path | None,
    names: list[str] | None,
    prompts: list[str],
    max_tokens: int,
    dtype: str,
    system: str,
    merged: tuple[str, ...] = (),
) -> common.Measurement:
    """``names`` None: base model for every request; else request i names ``names[i % n]``.
    ``merged`` adapters are pre-merged into the weights at start (dedicated tenants)."""
    config = loraplex_http.loraplex_config(
        dtype,
        adapters_dir,
        max_loras=NUM_ADAPTERS,
        max_lora_rank=LORA_RANK,
        max_num_seqs=len(prompts),
    )
    config = dataclasses.replace(
        config, lora=dataclasses.replace(config.lora, merged_adapters=merged)
    )
    with loraplex_http.live_server(config) as url:
        import httpx

        served = httpx.get(f"{url}/v1/models").json()["data"]
        base_name = next(m["id"] for m in served if m.get("parent") is None)
        models = [names[i % len(names)] if names else base_name for i in range(len(prompts))]
        missing = sorted(set(models) - {m["id"] for m in served})
        if missing:
            raise RuntimeError(f"{system}: the server does not serve {missing}")
        # Warm every adapter once (PEFT has them all loaded too): the timed run measures
        # serving, not the first load from disk.
        distinct = sorted(set(models))
        loraplex_http.http_completions(url, distinct, prompts[: len(distinct)], 2, "warm-up")
        return loraplex_http.http_completions(url, models, prompts, max_tokens, system)


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
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    results: dict[str, common.Measurement] = {}
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

        def record(key: str, measurement: common.Measurement) -> None:
            results[key] = measurement
            print(
                f"{measurement.system}: {measurement.tokens} tokens in "
                f"{measurement.seconds:.2f} s = {measurement.tokens_per_s:.1f} tok/s",
                flush=True,
            )

        record("r", run_bare_decode(model_dir, prompts, max_tokens, dtype))
        record("a", run_hf(model_dir, prompts, max_tokens, dtype))
        if not args.skip_peft:
            record("b", run_peft(model_dir, adapters_dir, names, prompts, max_tokens, dtype))
        record("c", run_loraplex(None, None, prompts, max_tokens, dtype, SYSTEMS["c"]))
        record("d", run_loraplex(adapters_dir, names, prompts, max_tokens, dtype, SYSTEMS["d"]))
        first = names[:1]
        merged = run_loraplex(
            adapters_dir, first, prompts, max_tokens, dtype, SYSTEMS["e"], merged=tuple(first)
        )
        record("e", merged)

    print()
    print(report(results))


def report(results: dict[str, common.Measurement]) -> str:
    """The table of systems, then the target ratios with met/missed."""
    references = {"c": "a", "d": "b"}  # same requests, same weights: texts should agree
    rows = []
    for key in SYSTEMS:
        m = results.get(key)
        if m is None:
            rows.append([SYSTEMS[key], "skipped", "-", "-", "-"])
            continue
        ref = results.get(references.get(key, ""))
        rows.append(
            [
                m.system,
                m.tokens,
                f"{m.seconds:.2f}",
                f"{m.tokens_per_s:.1f}",
                common.same_texts(m, ref),
            ]
        )
    table = common.markdown_table(
        ["system", "tokens", "wall s", "tok/s", "same text as (a)/(b)"], rows
    )
    ratio_rows = []
    for num, den, target in TARGETS:
        label, wanted = f"({num})/({den})", "-" if target is None else f">= {target:g}"
        if num not in results or den not in results:
            ratio_rows.append([label, wanted, "-", "skipped"])
            continue
        ratio = results[num].tokens_per_s / results[den].tokens_per_s
        status = "reference" if target is None else "met" if ratio >= target else "missed"
        ratio_rows.append([label, wanted, f"{ratio:.2f}", status])
    ratios = common.markdown_table(["ratio", "target", "measured", "status"], ratio_rows)
    return f"{table}\n\n{ratios}"


if __name__ == "__main__":
    main()
