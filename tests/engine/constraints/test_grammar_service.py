"""The grammar service: one compile per distinct text, errors and caps as 400s naming the
field, a time cap that refuses (and keeps refusing) a pathological grammar, and compiles that
leave the event loop running."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from transformers import AutoTokenizer

from loraplex.config import StructuredConfig
from loraplex.engine.constraints import ConstraintError, ConstraintSpec, GrammarService
from loraplex.engine.constraints import spec as specs

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
# ~0.5-1 s to compile on a laptop CPU (a regex per property, each its own token-mask cache).
SLOW = {
    "type": "object",
    "properties": {
        f"k{i}": {"type": "string", "pattern": "[a-z]{1,40}@[a-z]{1,40}"} for i in range(400)
    },
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def service(tokenizer, **options: object) -> GrammarService:
    config = StructuredConfig(**options)  # type: ignore[arg-type]
    return GrammarService(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}), config)


def test_one_compile_per_text_shared_by_concurrent_requests(tokenizer) -> None:
    grammars = service(tokenizer)
    first = grammars.compile_now(specs.json_schema(SCHEMA, "response_format"))
    pretty = specs.json_schema(json.dumps(SCHEMA, indent=2), "guided_json")  # same schema
    assert grammars.compile_now(pretty) is first

    async def many() -> list:
        spec = specs.choice(['say "hi"', "a\\b", "ünï"], "guided_choice")
        return await asyncio.gather(*(grammars.compile(spec) for _ in range(5)))

    results = asyncio.run(many())
    assert all(r is results[0] for r in results)
    for option in ['say "hi"', "a\\b", "ünï"]:  # choices are literal, quotes and all
        matcher = results[0].matcher()
        assert matcher.accept_string(option) and matcher.is_completed()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (ConstraintSpec("regex", "([a-z", "guided_regex"), "invalid regex"),
        (ConstraintSpec("grammar", "root ::= ", "structured_outputs"), "invalid grammar"),
        (specs.json_schema({"type": "foo"}, "response_format"), 'Unsupported type "foo"'),
        (specs.json_schema({"type": "integer", "minimum": 5, "maximum": 1}, "tools"), "range"),
    ],
)
def test_bad_constraints_are_errors_naming_the_field(tokenizer, spec, words) -> None:
    with pytest.raises(ConstraintError, match=words) as caught:
        service(tokenizer).compile_now(spec)
    assert caught.value.param == spec.param
    assert "/project/" not in str(caught.value)  # no C++ source paths for clients


def test_lark_and_ebnf_grammars_both_compile(tokenizer) -> None:
    grammars = service(tokenizer)
    for text in ['root ::= "a" root | "b"', 'start: "a"* "b"']:
        matcher = grammars.compile_now(ConstraintSpec("grammar", text, "guided_grammar")).matcher()
        assert matcher.accept_string("aab") and matcher.is_completed()


def test_size_and_depth_caps_refuse_before_any_work(tokenizer) -> None:
    grammars = service(tokenizer, max_grammar_bytes=120, max_schema_depth=4)
    with pytest.raises(ConstraintError, match="--structured-outputs-max-bytes"):
        grammars.compile_now(specs.choice([f"option {i}" for i in range(20)], "guided_choice"))
    deep: dict = {}
    for _ in range(5):  # depth 5
        deep = {"items": deep}
    with pytest.raises(ConstraintError, match="--structured-outputs-max-depth"):
        grammars.compile_now(specs.json_schema(deep, "response_format"))


def test_a_slow_grammar_times_out_stays_refused_and_never_blocks_the_loop(tokenizer) -> None:
    grammars = service(tokenizer, compile_timeout_s=0.05)
    slow = specs.json_schema(SLOW, "response_format")
    grammars.compile_now(specs.json_schema(SCHEMA, "x"))  # the vocabulary is read once, here

    async def scenario() -> tuple[int, float]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(ConstraintError, match="did not compile within"):
            await grammars.compile(slow)
        start = time.monotonic()
        with pytest.raises(ConstraintError, match="did not compile within"):
            await grammars.compile(slow)  # refused at once: no second worker spent on it
        ticker.cancel()
        return ticks, time.monotonic() - start

    ticks, again = asyncio.run(scenario())
    assert ticks >= 2  # the loop went on while the worker compiled
    assert again < 0.05
    grammars.close()
