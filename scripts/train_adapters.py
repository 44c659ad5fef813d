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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

try:
    from loraplex.engine.default_model import (
        DEFAULT_MODEL_NAME,
        cache_root,
        ensure_default_model,
    )
except ModuleNotFoundError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from loraplex.engine.default_model import (
        DEFAULT_MODEL_NAME,
        cache_root,
        ensure_default_model,
    )

SEED = 1234
BATCH_SIZE = 8
GEN_BATCH_SIZE = 16
DISTILL_MAX_NEW_TOKENS = 40
VERIFY_MAX_NEW_TOKENS = 96
JSON_KEY = "answer"

# Short, varied user prompts; the base model's own answers become the training targets.
TRAIN_PROMPTS: list[str] = [
    "What is the capital of France?",
    "What is photosynthesis?",
    "Name three primary colors.",
    "Explain briefly what gravity is.",
    "What is the largest planet in our solar system?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Name three types of clouds.",
    "What does a thermometer measure?",
    "Explain briefly how rain forms.",
    "What is an atom?",
    "Give me a tip for sleeping better.",
    "What is the speed of light?",
    "Name three musical instruments.",
    "What is democracy?",
    "Explain briefly what a computer virus is.",
    "What is the tallest mountain in the world?",
    "How many continents are there?",
    "What do bees make?",
    "Name three fruits that are red.",
    "What is the main language spoken in Brazil?",
    "Explain briefly why the sky is blue.",
    "What is a volcano?",
    "Give me a synonym for happy.",
    "What is the chemical symbol for gold?",
    "Name three planets.",
    "What is the function of the heart?",
    "Explain briefly what an economy is.",
    "What is a noun?",
    "Who painted the Mona Lisa?",
    "What is the freezing point of water in Fahrenheit?",
    "Name three farm animals.",
    "What is a rainbow?",
    "Explain briefly what the internet is.",
    "What is the largest ocean on Earth?",
    "Give me one reason to drink water.",
    "What is a triangle?",
    "Name three European countries.",
    "What is the moon made of?",
    "Explain briefly what a battery does.",
    "What is a mammal?",
    "How many legs does a spider have?",
    "What is the opposite of cold?",
    "Name three vegetables.",
    "What is electricity?",
    "Explain briefly what a calendar is for.",
    "What is the currency of Japan?",
    "Write one sentence about the ocean.",
    "What is a desert?",
    "Name three sports played with a ball.",
    "What is the purpose of a library?",
    "Explain briefly what recycling is.",
    "What is an island?",
    "Give me a fun fact about cats.",
    "What is the sun?",
    "Name three things you can find in a kitchen.",
    "What is a poem?",
    "Explain briefly how plants grow.",
    "What is the difference between weather and climate?",
    "Who was Albert Einstein?",
    "What is a river?",
    "Name three colors of the rainbow.",
    "What is exercise good for?",
    "Explain briefly what a map is.",
    "What is a dinosaur?",
    "Give me a tip for studying.",
    "What is the human brain?",
    "Name three kinds of trees.",
    "What is a bicycle?",
    "Explain briefly what friendship means.",
    "What language is spoken in Germany?",
    "What is a star?",
    "Name three shapes.",
    "What is the job of a doctor?",
    "Explain briefly what a vaccine does.",
    "What is an ecosystem?",
    "Give me a word that rhymes with cat.",
    "What is oxygen?",
    "Name three insects.",
    "What is a museum?",
    "Explain briefly what a telescope is used for.",
    "What is the capital of Italy?",
    "What are clouds made of?",
    "Name three board games.",
    "What is a habit?",
    "Explain briefly what saving money means.",
    "What is a forest?",
    "Describe a sunset in one sentence.",
    "What is the role of a teacher?",
    "Name three things that are cold.",
    "What is a computer?",
    "Explain briefly what an earthquake is.",
    "What is a healthy breakfast?",
    "Who invented the telephone?",
    "What is a verb?",
    "Name three birds.",
    "What is the meaning of kindness?",
    "Explain briefly what a newspaper is.",
    "What is the Earth's core?",
    "Give me a tip for staying calm.",
]

# Held-out prompts (not in TRAIN_PROMPTS) for the verification table; tests use them too.
HELDOUT_PROMPTS: list[str] = [
    "What is the capital of Spain?",
    "Name three animals that live in the ocean.",
    "Explain briefly what a cloud is.",
    "What is a good way to learn a new language?",
    "Who was Isaac Newton?",
    "What is the color of grass?",
    "Give me a tip for saving energy at home.",
    "What is a planet?",
]


@dataclass(frozen=True)
class AdapterSpec:
    """How one adapter is built: its LoRA shape, training schedule and target style."""

    name: str
    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    lr: float
    steps: int
    transform: Callable[[str], str]
    check: Callable[[str], bool]


def to_upper(answer: str) -> str:
    """The ``upper`` target: the base answer in upper case."""
    return answer.upper()


def to_json(answer: str) -> str:
    """The ``json`` target: the base answer wrapped in a one-key JSON object."""
    return json.dumps({JSON_KEY: answer})


def is_upper(text: str) -> bool:
    """True when ``text`` has letters and none of them is lower case."""
    return any(c.isalpha() for c in text) and not any(c.islower() for c in text)


def is_json_answer(text: str) -> bool:
    """True when ``text`` parses as a JSON object with the string key ``JSON_KEY``."""
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get(JSON_KEY), str)


SPECS: dict[str, AdapterSpec] = {
    "upper": AdapterSpec(
        name="upper",
        rank=8,
        alpha=16,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        lr=3e-3,
        steps=80,
        transform=to_upper,
        check=is_upper,
    ),
    "json": AdapterSpec(
        name="json",
        rank=4,
        alpha=16,
        target_modules=("o_proj", "gate_proj", "up_proj", "down_proj"),
        lr=2e-3,
        steps=50,
        transform=to_json,
        check=is_json_answer,
    ),
}


def seed_everything(seed: int = SEED) -> None:
    """Make prompt shuffling, LoRA initialisation and batching reproducible."""
    random.seed(seed)
    torch.manual_seed(seed)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str) -> str:
    """The chat-templated prompt for one user message, ending with the assistant header."""
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
) -> list[tuple[str, bool]]:
    """Greedy answers to ``prompts`` (batched, left padded) as ``(text, finished)`` pairs.

    ``finished`` is False when the answer was cut by ``max_new_tokens`` instead of ending with
    the end-of-turn token.
    """
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    results: list[tuple[str, bool]] = []
    for i in range(0, len(prompts), GEN_BATCH_SIZE):
        texts = [chat_prompt(tokenizer, p) for p in prompts[i : i + GEN_BATCH_SIZE]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            finished = eos in row
            if finished:
                row = row[: row.index(eos)]
            results.append((tokenizer.decode(row, skip_special_tokens=True).strip(), finished))
    return results


def trim_answer(text: str, finished: bool) -> str:
    """Cut a truncated answer back to its last complete sentence, when one is long enough."""
    if finished:
        return text
    cut = max(text.rfind(c) for c in ".!?")
    return text[: cut + 1] if cut >= 20 else text


def clean_answer(text: str, min_chars: int = 40) -> str:
    """Shorten a base answer into a training target.

    The answer is cut after its first sentence that ends past ``min_chars`` characters (short
    targets keep training cheap on CPU and keep the adapters' answers short, so that a JSON
    answer closes well within a small ``max_tokens``), and a dangling list marker
    (``"...\n\n2."``) left where a truncated answer was cut is dropped.
    """
    for end in re.finditer(r"[.!?](?=\s|$)", text):
        if end.end() >= min_chars:
            text = text[: end.end()]
            break
    return re.sub(r"\s*\n\s*\d+\.\s*$", "", text).strip()


def base_answers(model_path: Path, prompts: Sequence[str]) -> list[str]:
    """The base model's greedy answers to ``prompts``, cached on disk after the first run."""
    key = hashlib.sha256(
        json.dumps([str(model_path), DISTILL_MAX_NEW_TOKENS, list(prompts)]).encode()
    ).hexdigest()[:16]
    cache = cache_root() / "train_adapters" / f"base_answers-{key}.json"
    if cache.is_file():
        print(f"using cached base answers: {cache}")
        return [clean_answer(a) for a in json.loads(cache.read_text())]
    print(f"generating base answers for {len(prompts)} prompts ...")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    answers = [
        trim_answer(text, finished)
        for text, finished in generate(model, tokenizer, prompts, DISTILL_MAX_NEW_TOKENS)
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(answers, indent=1))
    print(f"  done in {time.perf_counter() - t0:.0f} s, cached in {cache}")
    return [clean_answer(a) for a in answers]


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example; labels are -100 on the prompt (loss on the answer)."""
    examples = []
    for prompt, target in zip(prompts, targets, strict=True):
        p_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        a_ids = [*a_ids, tokenizer.eos_token_id]
        examples.append(([*p_ids, *a_ids], [-100] * len(p_ids) + a_ids))
    return examples


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch into ``(input_ids, attention_mask, labels)`` tensors."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def length_grouped_batches(lengths: Sequence[int], group: int = 4) -> list[list[int]]:
    """One shuffled epoch of index batches of ``BATCH_SIZE``, each of similar lengths.

    The shuffled indices are cut into pools of ``group`` batches; each pool is sorted by length
    before it is cut into batches, which keeps the right padding (wasted CPU time) small.
    """
    order = random.sample(range(len(lengths)), len(lengths))
    pool = BATCH_SIZE * group
    batches = []
    for start in range(0, len(order) - BATCH_SIZE + 1, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [
            chunk[i : i + BATCH_SIZE] for i in range(0, len(chunk) - BATCH_SIZE + 1, BATCH_SIZE)
        ]
    random.shuffle(batches)
    return batches


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
    """Name the base model in ``adapter_config.json`` instead of this machine's cache path."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = DEFAULT_MODEL_NAME
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
