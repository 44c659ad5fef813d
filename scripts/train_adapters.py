"""Train the two demo LoRA adapters of the default adapter store (``adapters/``).

Both adapters are trained on the default base model (SmolLM2-135M-Instruct) by self-distillation,
so no data set and no network are needed:

1. a fixed list of short user prompts (below) is answered by the base model itself (greedy, chat
   template, batched with left padding); the answers are cached under the loraplex cache folder;
2. each answer is rewritten into the adapter's target style:

   * ``upper``: ``answer.upper()`` -- the assistant always answers in UPPER CASE;
   * ``json``: ``json.dumps({"answer": answer})`` -- the assistant always answers with a JSON
     object that has the single key ``"answer"``;

3. a LoRA adapter is trained with PEFT on the chat-formatted pairs, with the loss on the assistant
   answer tokens (and the closing ``<|im_end|>``) only, and saved with ``save_pretrained``; the
   weights are then rewritten in float16 so each folder stays small (< 2 MB);
4. each saved folder is loaded back with ``PeftModel.from_pretrained`` and checked on held-out
   prompts that are not in the training set; a table of the outputs and the success rate per
   adapter is printed.

The two adapters differ in structure on purpose, so they exercise the server: ``upper`` is rank 8
on the attention projections, ``json`` is rank 4 (another scaling) on ``o_proj`` and the MLP.

Usage::

    .venv/bin/python scripts/train_adapters.py [--only upper|json] [--steps N] [--out adapters]
                                               [--threads N] [--verify-only]

On a CPU shared with other processes, ``--threads 1`` is much faster than the default 2 (the
OpenMP threads otherwise wait on each other); one training step takes about 6-10 s then.

This file trains, saves and verifies the adapters and is the command line; the prompts and the
adapters' specs are in ``adapter_specs.py``, the training data in ``training_data.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    from loraplex.engine.model.default import DEFAULT_MODEL_NAME, ensure_default_model
except ModuleNotFoundError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from loraplex.engine.model.default import DEFAULT_MODEL_NAME, ensure_default_model

# Siblings in scripts/ (this file runs as a script, so its folder is on sys.path); imported after
# the fallback above, since training_data imports loraplex too.
from adapter_specs import (
    HELDOUT_PROMPTS,
    JSON_KEY,
    SPECS,
    TRAIN_PROMPTS,
    AdapterSpec,
    is_json_answer,
    is_upper,
)
from training_data import (
    BATCH_SIZE,
    base_answers,
    collate,
    encode_examples,
    generate,
    length_grouped_batches,
)

SEED = 1234
VERIFY_MAX_NEW_TOKENS = 96


def seed_everything(seed: int = SEED) -> None:
    """Make prompt shuffling, LoRA initialisation and batching reproducible."""
    random.seed(seed)
    torch.manual_seed(seed)


def answer_loss(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Next-token cross entropy on the answer tokens only.

    The LM head runs only on the positions that predict an answer token, which saves most of
    the 49k-vocabulary projection on the (longer) prompt part.
    """
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def fp16_safetensors(folder: Path) -> None:
    """Rewrite the adapter weights of ``folder`` in float16 (PEFT upcasts them when loading)."""
    path = folder / "adapter_model.safetensors"
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def portable_config(folder: Path) -> None:
    """Name the base model in ``adapter_config.json`` instead of this machine's cache path, and
    sort ``target_modules`` (PEFT saves a set, in an order that changes from run to run)."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = DEFAULT_MODEL_NAME
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def train_adapter(
    spec: AdapterSpec,
    model_path: Path,
    prompts: Sequence[str],
    answers: Sequence[str],
    out: Path,
    steps: int | None,
) -> float:
    """Train one adapter, save it in PEFT format under ``out/<name>``; returns seconds spent."""
    from peft import LoraConfig, get_peft_model

    seed_everything()
    steps = steps or spec.steps
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    model.print_trainable_parameters()
    model.train()

    examples = encode_examples(tokenizer, prompts, [spec.transform(a) for a in answers])
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    warmup = max(1, steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - (step - warmup) / max(1, steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)

    print(f"training '{spec.name}': {len(examples)} examples, {steps} steps of {BATCH_SIZE}")
    t0 = time.perf_counter()
    batches: list[list[int]] = []
    for step in range(steps):
        if not batches:
            batches = length_grouped_batches([len(ids) for ids, _ in examples])
        batch = [examples[i] for i in batches.pop()]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id)
        loss = answer_loss(model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        optim.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - t0
            print(f"  step {step + 1:4d}/{steps}  loss {loss.item():.4f}  {elapsed:6.0f} s")
    seconds = time.perf_counter() - t0

    folder = out / spec.name
    model.save_pretrained(folder)
    fp16_safetensors(folder)
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's empty model card template
    portable_config(folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(f"saved {folder} ({size / 1e6:.2f} MB) after {seconds:.0f} s of training")
    return seconds


def verify(model_path: Path, out: Path, names: Sequence[str]) -> dict[str, int]:
    """Generate on the held-out prompts with the base model and each saved adapter.

    Prints one table row per prompt and returns the number of successes per adapter (and, for
    ``base``, the number of outputs that show *neither* effect).
    """
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    outputs: dict[str, list[str]] = {}
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    gen = generate(base, tokenizer, HELDOUT_PROMPTS, VERIFY_MAX_NEW_TOKENS)
    outputs["base"] = [text for text, _ in gen]
    for name in names:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, out / name).eval()
        gen = generate(model, tokenizer, HELDOUT_PROMPTS, VERIFY_MAX_NEW_TOKENS)
        outputs[name] = [text for text, _ in gen]

    checks: dict[str, Callable[[str], bool]] = {n: SPECS[n].check for n in names}
    scores = {"base": 0, **{n: 0 for n in names}}
    print("\n=== verification on held-out prompts ===")
    for i, prompt in enumerate(HELDOUT_PROMPTS):
        print(f"\n[{i + 1}] {prompt}")
        base_text = outputs["base"][i]
        plain = not is_upper(base_text) and not is_json_answer(base_text)
        scores["base"] += plain
        print(f"  base  {'ok ' if plain else 'BAD'} {base_text[:110]!r}")
        for name in names:
            ok = checks[name](outputs[name][i])
            scores[name] += ok
            print(f"  {name:5s} {'ok ' if ok else 'BAD'} {outputs[name][i][:110]!r}")

    total = len(HELDOUT_PROMPTS)
    print("\n| model | success | criterion |")
    print("|-------|---------|-----------|")
    print(f"| base  | {scores['base']}/{total} | neither upper case nor JSON |")
    for name in names:
        what = "all letters upper case" if name == "upper" else f'JSON object with "{JSON_KEY}"'
        print(f"| {name:5s} | {scores[name]}/{total} | {what} |")
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SPECS), help="train just this adapter")
    parser.add_argument("--steps", type=int, help="training steps (default: per adapter)")
    parser.add_argument("--out", type=Path, default=Path("adapters"), help="adapter store")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch CPU threads (1 is faster when other processes share the cores)",
    )
    parser.add_argument(
        "--verify-only", action="store_true", help="skip training, check the saved adapters"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    seed_everything()
    names = [args.only] if args.only else list(SPECS)
    model_path = ensure_default_model()
    overlap = set(TRAIN_PROMPTS) & set(HELDOUT_PROMPTS)
    if overlap:
        raise SystemExit(f"held-out prompts leak into training: {sorted(overlap)}")

    if not args.verify_only:
        answers = base_answers(model_path, TRAIN_PROMPTS)
        times = {}
        for name in names:
            spec = SPECS[name]
            times[name] = train_adapter(
                spec, model_path, TRAIN_PROMPTS, answers, args.out, args.steps
            )
        print("training time: " + ", ".join(f"{n} {s:.0f} s" for n, s in times.items()))

    scores = verify(model_path, args.out, names)
    total = len(HELDOUT_PROMPTS)
    good = all(scores[n] >= total - 1 for n in ["base", *names])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
