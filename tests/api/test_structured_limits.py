"""Every refusal of a constraint or a tool definition is a 400 naming the field; a
pathological schema is refused within its caps while the engine keeps serving others."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from adapter_files import assert_error
from structured_world import TOOLS, WEATHER, structured_config, tool_model_dir

QUESTION = [{"role": "user", "content": "Hi"}]
# Compiles for ~0.5-2 s: a regex per property, each with its own token-mask cache.
SLOW = {
    "type": "object",
    "properties": {
        f"k{i}": {"type": "string", "pattern": "[a-z]{1,40}@[a-z]{1,40}"} for i in range(600)
    },
}


@pytest.fixture(scope="module")
def url(server_factory, tiny_config, tiny_model_dir, tmp_path_factory) -> str:
    model = tool_model_dir(tiny_model_dir, tmp_path_factory.mktemp("limits"))
    options = {"compile_timeout_s": 0.25, "max_grammar_bytes": 60_000, "max_schema_depth": 12}
    return server_factory(structured_config(tiny_config, model, **options))


def chat(url: str, **body: object) -> httpx.Response:
    payload = {"model": "tiny-llama", "messages": QUESTION, "max_tokens": 4, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def bad_tool(**function: object) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", **function}}]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"response_format": {"type": "xml"}}, "response_format", ["json_schema"]),
        ({"response_format": {"type": "json_schema"}}, "response_format", ["schema"]),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 1}}}},
            "response_format",
            ["invalid json schema"],
        ),
        ({"guided_json": {"type": "foo"}}, "guided_json", ['Unsupported type "foo"']),
        ({"guided_json": "{not json"}, "guided_json", ["not valid JSON"]),
        ({"guided_regex": "([a-z"}, "guided_regex", ["invalid regex"]),
        ({"structured_outputs": {"regex": "(("}}, "structured_outputs", ["invalid regex"]),
        ({"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs", ["grammar"]),
        ({"guided_grammar": "root ::= ["}, "guided_grammar", ["invalid grammar"]),
        ({"guided_choice": []}, "guided_choice", ["non-empty"]),
        ({"structured_outputs": {}}, "structured_outputs", ["exactly one"]),
        (
            {"guided_regex": "a", "response_format": {"type": "json_object"}},
            "guided_regex",
            ["one constraint"],
        ),
        ({"tools": bad_tool(parameters="a string")}, "tools", ["JSON schema of an object"]),
        ({"tools": bad_tool(parameters={"type": "array"})}, "tools", ["JSON schema"]),
        ({"tools": bad_tool(parameters={"properties": 3})}, "tools", ["JSON schema"]),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", ["name"]),
        ({"tools": [WEATHER, WEATHER]}, "tools", ["two tools"]),
        (
            {
                "tools": bad_tool(parameters={"type": "object", "properties": {"x": {"type": 7}}}),
                "tool_choice": "required",
            },
            "tools",
            ["invalid json schema"],
        ),
        ({"tools": TOOLS, "tool_choice": named("nope")}, "tool_choice", ["not among tools"]),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ["required"]),
        ({"tool_choice": "required"}, "tool_choice", ["needs tools"]),
        ({"tools": TOOLS}, "tool_choice", ["--enable-auto-tool-choice"]),  # auto by default
        (
            {"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"},
            "tool_choice",
            ["cannot be combined"],
        ),
    ],
)
def test_bad_constraints_and_tools_are_400s_naming_the_field(url, body, param, words) -> None:
    response = chat(url, **body)
    error = assert_error(response, 400, *words)
    assert error["param"] == param, error


def test_bad_grammars_on_completions_and_generate(url) -> None:
    out = httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny-llama", "prompt": "x", "response_format": {"type": "yaml"}},
    )
    assert assert_error(out, 400, "yaml")["param"] == "response_format"
    for grammar, words in (
        ({"type": "ebnf", "value": "x"}, "ebnf"),
        ({"type": "regex", "value": "(("}, "regex"),
    ):
        out = httpx.post(
            f"{url}/generate", json={"inputs": "x", "parameters": {"grammar": grammar}}
        )
        assert assert_error(out, 400, words)["param"] == "grammar"


def test_pathological_schemas_are_refused_and_the_server_keeps_serving(url) -> None:
    deep: dict = {"type": "integer"}
    for _ in range(20):
        deep = {"type": "array", "items": deep}
    response = chat(url, guided_json=deep)
    assert_error(response, 400, "--structured-outputs-max-depth")
    huge = {"enum": [f"value {i}" for i in range(10_000)]}
    assert_error(chat(url, guided_json=huge), 400, "--structured-outputs-max-bytes")

    def free() -> str:
        response = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 24, "temperature": 0},
            timeout=60,
        )
        return response.json()["choices"][0]["text"]

    before = free()
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(chat, url, guided_json=SLOW)
        during = pool.submit(free)  # the engine serves it while a worker compiles
        assert during.result() == before
        assert_error(slow.result(), 400, "did not compile within", "--structured-outputs-timeout")
    start = time.monotonic()
    assert_error(chat(url, guided_json=json.dumps(SLOW)), 400, "did not compile within")
    assert time.monotonic() - start < 2.0  # refused at once, not compiled again
    ok = chat(url, guided_choice=["fine"], max_tokens=8)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "fine"
    assert httpx.get(f"{url}/health").status_code == 200
