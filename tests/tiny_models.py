"""Tiny random decoders of many architectures, built from transformers' own config classes
(``AutoConfig.for_model``, shrunk; no download), their PEFT adapters, and the HF / PEFT oracle.

Every family gets 2 layers, hidden 64, 4 query heads over 2 KV heads of 16, vocabulary 96 (the
word tokenizer of ``builders.py``); window families a sliding window of ``WINDOW`` tokens and,
where the config has ``layer_types``, one sliding and one full layer; MoE families 4 experts, 2
per token. ``FAMILIES`` lists what differs per family.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from builders import VOCAB, word_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.pytorch_utils import Conv1D

WINDOW = 8  # the sliding window of the window families; prompts are longer
SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": VOCAB,
    "max_position_embeddings": 256,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 1,
    # Wider than transformers' 0.02: at hidden 64 that init answers one token forever, which
    # no comparison can tell apart from a wrong model.
    "initializer_range": 0.3,
}
MOE = {
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "shared_expert_intermediate_size": 64,
}
MIXED = ["sliding_attention", "full_attention"]


@dataclass(frozen=True)
class Family:
    """What a family's tiny config sets beyond ``SIZES``.

    ``window``: give it a window of ``WINDOW`` where its config has ``sliding_window``, and one
    sliding and one full layer where it has sliding ``layer_types``; ``triton``: run it through
    the Triton backend too (window, softcap and sinks families); ``moe``: it has experts.
    """

    overrides: dict = field(default_factory=dict)
    window: bool = False
    moe: bool = False
    triton: bool | None = None  # None: as ``window``
    lora_scale: float = 0.3  # factor on PEFT's random A and B (see ``_spread``)
    exclude: tuple[str, ...] = ()  # modules ``all-linear`` must leave out (PEFT cannot wrap)

    @property
    def runs_triton(self) -> bool:
        return self.window if self.triton is None else self.triton


WINDOWED = Family(window=True)
# Gemma's random tiny models are saturated (p ~ 1 on one token): full-size LoRA factors.
GEMMA = Family(window=True, lora_scale=1.0)
# The 26 families: sliding-window and softcap ones also run through Triton.
FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "qwen2": Family(),
    "qwen3": Family(),
    "gemma": Family(),
    "phi": Family(),
    "gpt2": Family({"n_positions": 256}),
    "gpt_neox": Family(),
    "falcon": Family({"new_decoder_architecture": True, "num_kv_heads": 2}),
    "olmo": Family(),
    "olmo2": Family(),
    "granite": Family(),
    "cohere": Family(),
    "stablelm": Family(),
    "gptj": Family({"rotary_dim": 8}),
    "opt": Family({"word_embed_proj_dim": 64, "ffn_dim": 128}),
    "smollm3": Family(),
    "glm": Family(),
    "qwen2_moe": Family(moe=True),
    "mistral": WINDOWED,
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "phi3": WINDOWED,
    "starcoder2": WINDOWED,
    "cohere2": WINDOWED,
    "mixtral": Family(window=True, moe=True),
    "qwen3_moe": Family(moe=True),
}
# Others transformers lists for causal LM that build small from their config class; their
# windows run through the reference only, but for gpt-oss (sinks).
OTHER = Family(window=True, triton=False)
OTHER_MOE = Family(window=True, triton=False, moe=True)
FAMILIES |= {t: OTHER for t in (
    "apertus", "arcee", "bitnet", "biogpt", "ctrl", "cwm", "doge", "ernie4_5", "exaone4",
    "glm4", "granite_swa", "helium", "hunyuan_v1_dense", "hyperclovax", "internlm3",
    "iquestcoder", "jais2", "ministral", "ministral3", "nanochat", "nemotron", "olmo3",
    "persimmon", "seed_oss", "vaultgemma",
)}  # fmt: skip
FAMILIES |= {t: OTHER_MOE for t in (
    "aria_text", "cohere2_moe", "ernie4_5_moe", "exaone_moe", "flex_olmo", "glm4_moe",
    "granitemoe", "granitemoe_swa", "granitemoeshared", "hunyuan_v1_moe", "kolibri1",
    "lara_mini", "mellum", "olmoe", "param2moe", "sarvam_moe", "solar_open",
)}  # fmt: skip
FAMILIES["gpt_oss"] = Family(window=True, moe=True)  # sinks, biased experts: Triton too
# Phi-MoE's router subclasses nn.Linear: all-linear would wrap it, which PEFT cannot run.
FAMILIES["phimoe"] = Family(window=True, triton=False, moe=True, exclude=("router",))


def tiny_config(model_type: str, family: Family | None = None) -> PretrainedConfig:
    """The family's default config with every size of ``SIZES`` (and ``MOE``) it has set:
    a field the config lacks is left out, so it never holds a value its model ignores."""
    family = family or FAMILIES[model_type]
    default = AutoConfig.for_model(model_type)
    sizes = {**SIZES, **(MOE if family.moe else {})}
    if family.window and hasattr(default, "sliding_window"):
        sizes["sliding_window"] = WINDOW
        if "sliding_attention" in (getattr(default, "layer_types", None) or ()):
            sizes["layer_types"] = MIXED
    kept = {
        key: value
        for key, value in sizes.items()
        if hasattr(default, key) and not isinstance(getattr(type(default), key, None), property)
    }
    kept |= {key: sizes[key] for key in ("sliding_window", "layer_types") if key in sizes}
    return AutoConfig.for_model(model_type, **{**kept, **family.overrides})


def save_tiny_model(folder: Path, model_type: str, seed: int = 0) -> Path:
    """A random tiny ``model_type`` decoder (float32) and the word tokenizer, in ``folder``."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type))
    model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def attention_targets(model: torch.nn.Module) -> list[str]:
    """The last names of the model's linear layers inside its attention modules."""
    return sorted(
        {
            name.rpartition(".")[2]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D) and re.search(r"attn|attention", name)
        }
    )


def save_adapters(model_dir: Path, out: Path, model_type: str) -> dict[str, Path]:
    """Two PEFT adapters with random A and B: ``all`` (r 8, every linear layer, and on a MoE
    model its experts and router, as PEFT's ``all-linear`` conversion makes them) and ``attn``
    (r 4, rsLoRA, the family's attention projections)."""
    attention = attention_targets(AutoModelForCausalLM.from_pretrained(model_dir))
    configs = {
        "all": LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        "attn": LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=attention),
    }
    family = FAMILIES[model_type]
    if family.moe and model_type != "mixtral":  # mixtral: PEFT's all-linear converts
        configs["all"].target_parameters = [
            "experts.gate_up_proj", "experts.down_proj", "gate.weight", "router.weight"
        ]  # fmt: skip
    if family.exclude:
        configs["all"].exclude_modules = list(family.exclude)
    paths = {}
    for seed, (name, config) in enumerate(configs.items(), start=1):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        config.init_lora_weights = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(base, config)
        _spread(model, family.lora_scale)
        model.save_pretrained(out / name)
        paths[name] = out / name
    return paths


def _spread(model: torch.nn.Module, factor: float) -> None:
    """PEFT's random B is N(0, 1) scaled by alpha/r: on hidden 64 that drowns the base model.
    Shrink every LoRA factor so each update changes the output without saturating it."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(factor)


def hf_generate(
    model_dir: Path, adapter: Path | None, prompt: list[int], max_new_tokens: int
) -> tuple[list[int], list[float]]:
    """Greedy tokens from HF ``generate`` (PEFT with ``adapter``), float32, EOS ignored, and
    each token's log-probability under the model."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    model.generation_config.eos_token_id = None
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        torch.log_softmax(step[0].float(), -1)[token].item()
        for step, token in zip(out.logits, tokens, strict=True)
    ]
    return tokens, logprobs
