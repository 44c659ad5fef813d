"""Structured outputs end to end, through the real openai client on a real server: parse()
with a pydantic model, JSON schemas checked by ``jsonschema``, regex and choice, streamed JSON,
TGI's grammar on /generate, and constrained requests batched with free ones that keep their
exact text. (The refusals are in test_structured_limits.py.)"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from structured_world import ORDER, ROOMY, Person, structured_config, tool_model_dir

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def url(server_factory, tiny_config, tiny_model_dir, tmp_path_factory) -> str:
    model = tool_model_dir(tiny_model_dir, tmp_path_factory.mktemp("structured"))
    return server_factory(structured_config(tiny_config, model))


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def order_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}


def test_parse_with_a_pydantic_model_on_an_adapter(client, tiny_adapter_name) -> None:
    for model in (tiny_adapter_name, "tiny-llama"):
        completion = client.chat.completions.parse(
            model=model, messages=QUESTION, response_format=Person, max_tokens=ROOMY, temperature=0
        )
        [choice] = completion.choices
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Person)  # pydantic validated every bound


def test_json_schema_samples_and_completions_follow_the_schema(client, base_name) -> None:
    chat = client.chat.completions.create(
        model=base_name,
        messages=QUESTION,
        response_format=order_format(),
        n=3,
        temperature=1.0,
        seed=11,
        max_tokens=ROOMY,
        logprobs=True,
        top_logprobs=3,
    )
    texts = [choice.message.content for choice in chat.choices]
    assert len(set(texts)) > 1
    for choice in chat.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), ORDER)
        assert all(lp.logprob >= -9999.0 for lp in choice.logprobs.content)
    completion = client.completions.create(
        model=base_name,
        prompt="Order:",
        max_tokens=ROOMY,
        temperature=0,
        extra_body={"structured_outputs": {"json": ORDER}},
    )
    jsonschema.validate(json.loads(completion.choices[0].text), ORDER)
    json_object = client.chat.completions.create(
        model=base_name,
        messages=QUESTION,
        response_format={"type": "json_object"},
        max_tokens=ROOMY,
        temperature=0,
    )
    if json_object.choices[0].finish_reason == "stop":  # a random model may ramble on in it
        assert isinstance(json.loads(json_object.choices[0].message.content), dict)
    else:
        assert json_object.choices[0].message.content.startswith("{")


def test_regex_and_choice_on_every_route(client, url, base_name) -> None:
    regex = r"[a-c]{2,4}-[0-9]{2}"
    for body in ({"structured_outputs": {"regex": regex}}, {"guided_regex": regex}):
        out = client.completions.create(
            model=base_name, prompt="Code:", max_tokens=20, temperature=0, extra_body=body
        )
        assert re.fullmatch(regex, out.choices[0].text), out.choices[0].text
    options = ["yes", "no", "it depends"]
    for body in ({"structured_outputs": {"choice": options}}, {"guided_choice": options}):
        chat = client.chat.completions.create(
            model=base_name, messages=QUESTION, max_tokens=20, temperature=0, extra_body=body
        )
        assert chat.choices[0].message.content in options
    native = httpx.post(
        f"{url}/generate",
        json={
            "inputs": "Code:",
            "parameters": {"max_new_tokens": 20, "grammar": {"type": "regex", "value": regex}},
        },
        timeout=120,
    )
    assert re.fullmatch(regex, native.json()["generated_text"])
    native = httpx.post(
        f"{url}/generate",
        json={
            "inputs": "Order:",
            "parameters": {"max_new_tokens": ROOMY, "grammar": {"type": "json", "value": ORDER}},
        },
        timeout=120,
    )
    jsonschema.validate(json.loads(native.json()["generated_text"]), ORDER)


def test_streamed_json_assembles_to_the_whole_response(client, base_name) -> None:
    kwargs = {
        "model": base_name,
        "messages": QUESTION,
        "response_format": order_format(),
        "max_tokens": ROOMY,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    pieces, reasons = [], []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole
    assert reasons[-1] == "stop"
    jsonschema.validate(json.loads(whole), ORDER)


def test_free_requests_keep_their_exact_text_next_to_constrained_ones(
    client, base_name, tiny_adapter_name
) -> None:
    free = [
        {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}
        for model in (base_name, tiny_adapter_name)
        for prompt in ("Hello world!", "The capital of France is")
    ]
    constrained = [
        {**free[0], "max_tokens": ROOMY, "extra_body": {"response_format": order_format()}},
        {**free[1], "max_tokens": 20, "extra_body": {"guided_choice": ["yes", "no"]}},
        {**free[3], "max_tokens": 20, "extra_body": {"guided_regex": r"[a-z]{3}"}},
    ]

    def text(kwargs: dict) -> str:
        return client.completions.create(**kwargs).choices[0].text

    alone = [text(kwargs) for kwargs in free]
    with ThreadPoolExecutor(len(free) + len(constrained)) as pool:
        mixed = list(pool.map(text, constrained + free + constrained))
    assert mixed[len(constrained) : len(constrained) + len(free)] == alone
    assert mixed[1] in ("yes", "no") and re.fullmatch("[a-z]{3}", mixed[2])
    jsonschema.validate(json.loads(mixed[0]), ORDER)


def test_vllm_guided_json_schema_text_and_whitespace_variants_share_a_compile(
    client, url, base_name
) -> None:
    def misses() -> float:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith('loraplex_grammar_cache_lookups_total{result="miss"}'):
                return float(line.split()[-1])
        return 0.0

    bodies = [{"guided_json": ORDER}, {"guided_json": json.dumps(ORDER, indent=2)}]
    before = misses()
    outs = [
        client.completions.create(
            model=base_name, prompt="Tea:", max_tokens=ROOMY, temperature=0, extra_body=body
        )
        .choices[0]
        .text
        for body in bodies
    ]
    assert outs[0] == outs[1]
    assert misses() - before <= 1  # ORDER compiled at most once here (the same cache key)
