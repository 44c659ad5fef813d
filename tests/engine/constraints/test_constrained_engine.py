"""Constrained rows ride the normal step: mixed with free rows and adapters, with n > 1,
logprobs, stop strings, max_tokens, chunked prefill, the prefix cache and preemption."""

from __future__ import annotations

import json

import pytest
from constrained_helpers import (
    CHOICE_SPEC,
    PERSON_SPEC,
    REGEX_SPEC,
    accepted,
    make_engine,
    person_ok,
    run,
    small,
)

from loraplex import metrics
from loraplex.engine.sample.logprobs import LOGPROB_FLOOR

GREEDY = {"max_tokens": 120, "temperature": 0.0}  # constrained rows end at ~60 (EOS)
FREE = {"max_tokens": 12, "temperature": 0.0}


@pytest.fixture(scope="module")
def roomy(tiny_config) -> tuple:
    """An engine with room for everything, and its grammar service."""
    return make_engine(tiny_config, **small(tiny_config))


@pytest.fixture(scope="module")
def prompts(roomy) -> list[list[int]]:
    texts = ["The capital of France is", "Hello world!", "LoRA adds", "Many adapters can"]
    return [roomy[0].tokenizer(t).input_ids for t in texts]


def test_free_rows_are_untouched_and_constrained_rows_follow_their_grammar(
    roomy, tiny_adapter_name, prompts
) -> None:
    engine, service = roomy
    adapters = [None, tiny_adapter_name] * 2
    free = [(p, a, None, FREE) for p, a in zip(prompts, adapters, strict=True)]
    alone = run(engine, service, free)
    constrained = [
        (prompts[0], tiny_adapter_name, PERSON_SPEC, GREEDY),
        (prompts[1], None, CHOICE_SPEC, GREEDY),
        (prompts[2], tiny_adapter_name, REGEX_SPEC, GREEDY),
    ]
    mixed = run(engine, service, free[:2] + constrained + free[2:])
    assert [r["tokens"] for r in mixed[:2] + mixed[5:]] == [r["tokens"] for r in alone]
    person, choice, regex = mixed[2:5]
    assert person["reason"] == "stop" and person_ok(person["text"])
    assert choice["reason"] == "stop" and choice["text"] in ("yes", "no", "maybe")
    assert regex["reason"] == "stop"
    for result, spec in zip(mixed[2:5], [PERSON_SPEC, CHOICE_SPEC, REGEX_SPEC], strict=True):
        # EOS came only where the grammar is complete: the matcher accepted it last.
        assert result["tokens"][-1] in engine.eos_token_ids
        assert accepted(service, spec, result["tokens"])


def test_n_samples_each_follow_the_grammar_with_logprobs(roomy, prompts) -> None:
    engine, service = roomy
    params = {"max_tokens": 120, "temperature": 1.0, "seed": 3, "logprobs": 5}
    results = run(engine, service, [(prompts[0], None, PERSON_SPEC, params)], n=3)
    assert len({r["text"] for r in results}) > 1  # the samples differ
    for result in results:
        assert result["reason"] == "stop" and person_ok(result["text"])
        assert accepted(service, PERSON_SPEC, result["tokens"])
        for entry in result["logprobs"]:
            # The distribution sampled from: masked tokens are the floor, never -inf or NaN.
            assert LOGPROB_FLOOR <= entry.logprob <= 0.0
            assert all(LOGPROB_FLOOR <= lp <= 0.0 for _, lp in entry.top)
    choice = run(engine, service, [(prompts[1], None, CHOICE_SPEC, params)])[0]
    first = choice["logprobs"][0]
    allowed = {t for t, lp in first.top if lp > LOGPROB_FLOOR}
    assert first.token_id in allowed and len(allowed) < 5  # few tokens can start a choice


def test_length_cut_and_stop_string_end_constrained_rows_as_free_ones(roomy, prompts) -> None:
    engine, service = roomy
    requests = [
        (prompts[0], None, PERSON_SPEC, {**GREEDY, "max_tokens": 5}),
        (prompts[0], None, PERSON_SPEC, GREEDY),
        (prompts[0], None, PERSON_SPEC, {**GREEDY, "stop": ('"age"',)}),
    ]
    cut, whole, stop = run(engine, service, requests)
    assert cut["reason"] == "length" and len(cut["tokens"]) == 5
    assert whole["text"].startswith(cut["text"])
    assert stop["reason"] == "stop" and stop["text"] == whole["text"].split('"age"')[0]


def test_preemption_chunked_prefill_and_prefix_cache_give_the_same_tokens(
    tiny_config, roomy, tiny_adapter_name, prompts
) -> None:
    long_prompt = prompts[0] * 8  # several chunks of 16 tokens, two full blocks
    params = {**GREEDY, "max_tokens": 90}
    requests = [
        (long_prompt, None, PERSON_SPEC, params),
        (long_prompt, tiny_adapter_name, PERSON_SPEC, params),
        (prompts[1], None, REGEX_SPEC, params),
    ]
    engine, service = roomy
    first = run(engine, service, requests)
    again = run(engine, service, requests)  # the long prompts now come from the prefix cache
    tight_engine, tight_service = make_engine(tiny_config, **small(tiny_config, 10, 16))
    preempted = metrics.PREEMPTIONS._value.get()
    tight = run(tight_engine, tight_service, requests)  # chunked, and preempted for blocks
    assert metrics.PREEMPTIONS._value.get() > preempted
    assert [r["tokens"] for r in again] == [r["tokens"] for r in first]
    assert [r["tokens"] for r in tight] == [r["tokens"] for r in first]
    assert person_ok(first[0]["text"]) and person_ok(first[1]["text"])
    assert json.loads(first[0]["text"]) != json.loads(first[1]["text"])  # the adapter counts
