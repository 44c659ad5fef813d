"""PEFT's module-name rules on RE2: the same answers as PEFT's own matching (and as PEFT's own
LoRA layers on a real model), regex bombs answered at once, and what RE2 cannot run refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from adapter_edits import LIMITS, SERVED
from builders import ALL_SEVEN, save_adapter
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from transformers import AutoModelForCausalLM

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.module_patterns import MAX_PATTERN_KEYS
from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.rules import CONFIG_FILE, Limits
from loraplex.adapters.weights import build_adapter

# Backtracking regexes: Python's re needs seconds for the first on a 31-character name (twice as
# long per extra character); the second never ends.
BOMBS = ["mode(.|.)*Q", "(.|.|.)*Q"]
NAMES = [
    *(f"model.layers.{i}.self_attn.{p}" for i in (0, 1, 11) for p in ALL_SEVEN[:4]),
    *(f"model.layers.{i}.mlp.{p}" for i in (0, 1, 11) for p in ALL_SEVEN[4:]),
    "lm_head",
    "q_proj",
    "model.layers.0.self_attn.xq_proj",
    "vision_tower.blocks.0.attn.q_proj",
]
TARGETS = [
    ["q_proj", "v_proj"],
    ["self_attn.q_proj", "layers.1.mlp.up_proj"],
    r".*\.(q|k|v|o)_proj",
    r"model\.layers\.\d+\.mlp\..*",
    r"^(?:model)\.layers\.1[0-9]?\..*_proj$",
    "q_proj",  # a string must match the whole name: only the top-level "q_proj"
]
EXCLUDES = [None, ["v_proj"], ["layers.0.self_attn.q_proj"], r".*\.1\..*", r".*mlp.*"]
KEYS = ["q_proj", r"layers\.1\..*", "self_attn.k_proj", r"(gate|up)_proj", ".*", "proj", "x|q_proj"]


def parse(**fields: object) -> PeftConfig:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    return PeftConfig.parse(json.dumps(config | fields).encode(), LIMITS, "")


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("excluded", EXCLUDES)
def test_targets_match_peft(targets: list[str] | str, excluded: list[str] | str | None) -> None:
    ours = parse(target_modules=targets, exclude_modules=excluded)
    peft_config = LoraConfig(target_modules=targets, exclude_modules=excluded)
    for name in NAMES:
        assert ours.targets(name) == bool(check_target_module_exists(peft_config, name)), name


def test_pattern_keys_match_peft() -> None:
    """The first matching key wins, in the file's order, as PEFT's ``get_pattern_key``."""
    for order in (KEYS, KEYS[::-1]):
        pattern = {key: i + 1 for i, key in enumerate(order)}
        ours = parse(rank_pattern=pattern, alpha_pattern=pattern)
        for name in NAMES:
            expected = pattern.get(get_pattern_key(list(pattern), name), 4)
            assert ours.rank_of(name) == expected, (name, order)
            assert ours.alpha_of(name) == pattern.get(get_pattern_key(list(pattern), name), 8)


@pytest.mark.parametrize(
    "lora",
    [
        {"target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 2}},
        {
            "target_modules": r".*\.(q|k|v|o)_proj",
            "rank_pattern": {r"layers\.1\..*": 2},
            "alpha_pattern": {"o_proj": 3},
            "use_rslora": True,
        },
        {
            "target_modules": "all-linear",
            "exclude_modules": ["down_proj"],
            "rank_pattern": {r"mlp\.(gate|up)_proj": 3},
            "alpha_pattern": {r".*1\.self_attn\.q_proj": 2},
        },
        {
            "target_modules": ALL_SEVEN,
            "exclude_modules": r".*\.0\.mlp\..*",
            "rank_pattern": {"model.layers.1.self_attn.k_proj": 6, "v_proj": 5},
        },
    ],
)
def test_per_module_rank_and_scale_equal_peft_layers(
    model_dir: Path, module_shapes: dict, tmp_path: Path, lora: dict
) -> None:
    """PEFT builds the adapter on a real model; its LoRA layers' ``r`` and ``scaling`` are what
    the saved config must give here, module by module, and the targeted set is the same."""
    folder = save_adapter(model_dir, tmp_path / "a", seed=3, r=4, lora_alpha=8, **lora)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), folder)
    expected = {
        name.removeprefix("base_model.model."): (layer.r["default"], layer.scaling["default"])
        for name, layer in peft_model.named_modules()
        if isinstance(layer, LoraLayer)
    }
    checked = check_folder(folder, LIMITS, SERVED, module_shapes)
    assert {m for m in module_shapes if checked.config.targets(m)} == set(expected)
    adapter = build_adapter("a", checked)
    assert {m: w.rank for m, w in adapter.modules.items()} == {
        m: r for m, (r, _) in expected.items()
    }
    scales = {m: w.scale for m, w in adapter.modules.items()}
    assert scales == pytest.approx({m: s for m, (_, s) in expected.items()})


@pytest.mark.parametrize("bomb", BOMBS)
@pytest.mark.parametrize(
    "field", ["target_modules", "exclude_modules", "rank_pattern", "alpha_pattern"]
)
def test_regex_bombs_are_answered_at_once(adapter: Path, check, bomb: str, field: str) -> None:
    """Each bomb is checked against every module of the adapter in well under a second: a
    target nothing matches is refused (the weights name modules it does not target); an
    exclusion or pattern key nothing matches changes nothing (accepted, as PEFT would)."""
    config = json.loads((adapter / CONFIG_FILE).read_text())
    config[field] = bomb if field.endswith("_modules") else {bomb: 2}
    (adapter / CONFIG_FILE).write_text(json.dumps(config))
    start = time.perf_counter()
    if field == "target_modules":
        with pytest.raises(AdapterValidationError, match="not in target_modules"):
            check(adapter)
    else:
        assert check(adapter).rank_of("model.layers.0.self_attn.q_proj") == 4
    assert time.perf_counter() - start < 1.0
    long_name = "model.layers.0.self_attn.q_proj" * 100
    start = time.perf_counter()
    config = parse(target_modules=bomb, exclude_modules=bomb, rank_pattern={bomb: 2})
    assert not config.targets(long_name) and config.rank_of(long_name) == 4
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_modules": r"(?!.*vision).*q_proj"}, "not supported .*lookaround"),
        ({"exclude_modules": r"(q)_\1"}, "not supported"),
        ({"rank_pattern": {r"(?<=self_attn\.)q_proj": 2}}, "rank_pattern key .* not supported"),
        ({"alpha_pattern": {"a{2000}": 2}}, "alpha_pattern key .* not supported"),
        ({"target_modules": r"\Qq_proj\E"}, "invalid regular expression"),  # RE2 only
        ({"rank_pattern": {f"k{i}": 2 for i in range(MAX_PATTERN_KEYS + 1)}}, "keys; the limit"),
    ],
)
def test_what_re2_cannot_run_is_refused(fields: dict, message: str) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        parse(**fields)


def test_a_config_at_the_key_limit_is_checked_quickly(adapter: Path, check) -> None:
    """The most keys allowed, none matching: every module runs through all of them."""
    config = json.loads((adapter / CONFIG_FILE).read_text())
    keys = {rf"model\.layers\.{i}\.self_attn\.(x|y)_proj": 2 for i in range(MAX_PATTERN_KEYS)}
    config.update(rank_pattern=keys, alpha_pattern=keys)
    (adapter / CONFIG_FILE).write_text(json.dumps(config))
    start = time.perf_counter()
    check(adapter, Limits(max_rank=16))
    assert time.perf_counter() - start < 2.0
