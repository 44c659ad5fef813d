"""What ``--lora-dtype`` does to outputs: greedy agreement of loraplex with PEFT, per table dtype.

The default model (float32) serves the shipped adapters (``adapters/upper``, ``adapters/json``)
and ``--random`` random PEFT adapters (rank 16, all seven projections, ``init_lora_weights=False``)
with slot tables in each ``--lora-dtypes``. Every (prompt, adapter) pair is generated greedily
for ``--max-tokens`` tokens (EOS ignored) by the engine, all pairs in one continuous batch, and by
PEFT one prompt at a time (float32, no padding): the oracle. Each row: how many sequences equal
PEFT's token for token, and the mean share of tokens before the first difference.
``auto`` (float32 tables) is the baseline: what batching alone changes.

    .venv/bin/python bench/lora_dtype.py            # 8 prompts x 32 tokens, 2 random adapters
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.request.params import SamplingParams

SHIPPED = Path(__file__).resolve().parents[1] / "adapters"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--random", type=int, default=2, help="random r16 all-seven adapters")
    parser.add_argument("--lora-dtypes", default="auto,bfloat16,float16")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def peft_tokens(model_dir: Path, store: Path, names: list[str], ids, max_tokens: int) -> dict:
    """{(prompt index, adapter): greedy tokens} from PEFT, one prompt at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, store / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(store / name, adapter_name=name)
    model.eval()
    model.generation_config.eos_token_id = None
    out = {}
    for name in names:
        model.set_adapter(name)
        for i, prompt in enumerate(ids):
            with torch.inference_mode():
                gen = model.generate(
                    torch.tensor([prompt]),
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
            out[i, name] = gen[0, len(prompt) :].tolist()
    return out


def engine_tokens(store: Path, names: list[str], ids, max_tokens: int, lora_dtype: str) -> dict:
    """{(prompt index, adapter): greedy tokens} from one continuous batch of every pair."""
    engine = build_engine(
        Config(
            model=ModelConfig(max_model_len=512),
            cache=CacheConfig(kv_cache_memory_mb=256),
            scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512),
            lora=LoRAConfig(
                max_loras=len(names), max_lora_rank=16, adapters_dir=str(store),
                lora_dtype=lora_dtype,
            ),
        )
    )  # fmt: skip
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    keys = {}
    for i, prompt in enumerate(ids):
        for name in names:
            keys[f"{i}/{name}"] = (i, name)
            engine.add_request(f"{i}/{name}", prompt, params, name)
    out = {key: [] for key in keys.values()}
    while engine.has_unfinished():
        for step in engine.step():
            out[keys[step.request_id]].extend(step.token_ids)
    return out


def agreement(got: dict, expected: dict, names: list[str]) -> tuple[int, int, float]:
    """(sequences equal, sequences, mean share of tokens before the first difference)."""
    pairs = [(got[k], expected[k]) for k in expected if k[1] in names]
    prefixes = []
    for a, b in pairs:
        same = next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(b))
        prefixes.append(same / len(b))
    return sum(a == b for a, b in pairs), len(pairs), statistics.mean(prefixes)


def main() -> None:
    args = parse_args()
    common.setup(args.threads)
    from transformers import AutoTokenizer

    model_dir = common.default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer(p).input_ids for p in common.chat_prompts(tokenizer, args.prompts)]
    with common.temp_dir("loraplex-lora-dtype-") as tmp:
        store = Path(tmp)
        shipped = ["upper", "json"]
        for name in shipped:
            shutil.copytree(SHIPPED / name, store / name)
        randoms = [f"r{i}" for i in range(args.random)]
        if randoms:
            made = common.make_adapters(model_dir, store / "made", args.random)
            for made_name, name in zip(made, randoms, strict=True):
                (store / "made" / made_name).rename(store / name)
            (store / "made").rmdir()
        names = shipped + randoms
        expected = peft_tokens(model_dir, store, names, ids, args.max_tokens)
        print(
            f"# bench/lora_dtype.py: {model_dir.name} float32, {args.prompts} prompts x "
            f"{args.max_tokens} greedy tokens per adapter, against PEFT one prompt at a time"
        )
        print("| --lora-dtype | adapters | equal to PEFT | tokens before the first difference |")
        print("|---|---|---:|---:|")
        for lora_dtype in args.lora_dtypes.split(","):
            got = engine_tokens(store, names, ids, args.max_tokens, lora_dtype)
            groups = [("shipped (upper, json)", shipped)]
            if randoms:
                groups.append((f"random r16 all-seven (x{len(randoms)})", randoms))
            for label, group in groups:
                equal, total, prefix = agreement(got, expected, group)
                print(f"| {lora_dtype} | {label} | {equal}/{total} | {prefix:.1%} |")
            common.free_memory()


if __name__ == "__main__":
    main()
