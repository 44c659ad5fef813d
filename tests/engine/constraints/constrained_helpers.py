"""An engine over the session's tiny byte-level model (``tiny_config``) with its grammar
service, and a loop that runs prepared requests to the end."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from loraplex.config import CacheConfig, Config, SchedulerConfig, StructuredConfig
from loraplex.engine.build import build_engine
from loraplex.engine.constraints import ConstraintSpec, GrammarService
from loraplex.engine.constraints import spec as specs
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

# Bounded everywhere, so a random model finishes it well within max_tokens. (A pattern, not
# maxLength: xgrammar 0.2.9 lets a length-bounded string hold raw control characters.)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "color", "tags"],
}
PERSON_SPEC = specs.json_schema(PERSON, "response_format")
CHOICE_SPEC = specs.choice(["yes", "no", "maybe"], "guided_choice")
REGEX_SPEC = specs.text_spec("regex", r"[a-c]{2,4}-[0-9]{2}", "guided_regex")


def make_engine(config: Config, **changes: Any) -> tuple[LLMEngine, GrammarService]:
    """``config`` with ``changes`` (cache=..., scheduler=...) and compact JSON."""
    structured = StructuredConfig(max_whitespace=0)
    config = dataclasses.replace(config, structured=structured, **changes)
    engine = build_engine(config)
    service = GrammarService(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, structured)
    return engine, service


def small(config: Config, num_blocks: int = 128, step_tokens: int = 256) -> dict[str, Any]:
    """Cache and scheduler changes for :func:`make_engine`."""
    return {
        "cache": CacheConfig(block_size=16, num_blocks=num_blocks),
        "scheduler": SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=step_tokens),
    }


def run(
    engine: LLMEngine,
    service: GrammarService,
    requests: list[tuple[list[int], str | None, ConstraintSpec | None, dict[str, Any]]],
    n: int = 1,
) -> list[dict[str, Any]]:
    """Submit ``(prompt, adapter, constraint, params)`` requests together; each child's
    tokens, text, finish reason and logprobs, in request then choice order."""
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for i, (prompt, adapter, spec, params) in enumerate(requests):
        grammar = None if spec is None else service.compile_now(spec)
        sampling = SamplingParams(constraint=spec, **params)
        parent = engine.prepare(str(i), [prompt], sampling, adapter, n=n, grammar=grammar)
        engine.submit(parent)
        for j in range(n):
            results[(str(i), j)] = {"tokens": [], "text": "", "reason": None, "logprobs": []}
    steps = 0
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            result = results[(out.request_id, out.index)]
            result["tokens"] += out.token_ids
            result["text"] += out.text
            result["logprobs"] += out.logprobs or []
            result["reason"] = out.finish_reason or result["reason"]
        steps += 1
        assert steps < 2000
    return [results[key] for key in sorted(results, key=lambda k: (int(k[0]), k[1]))]


def accepted(service: GrammarService, spec: ConstraintSpec, tokens: list[int]) -> bool:
    """Whether a fresh matcher of ``spec`` accepts ``tokens`` in order."""
    matcher = service.compile_now(spec).matcher()
    return all(matcher.accept_token(t) for t in tokens)


def person_ok(text: str) -> bool:
    value = json.loads(text)
    return (
        set(value) == set(PERSON["properties"])
        and 1 <= len(value["name"]) <= 6
        and 0 <= value["age"] <= 120
        and value["color"] in ("red", "green", "blue")
        and len(value["tags"]) <= 2
    )
