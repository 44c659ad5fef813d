"""Tool calling end to end through the openai client: required and named tool_choice through
constrained decoding, auto through the hermes parser, OpenAI's response and stream shapes,
and a follow-up turn with the tool's result rendered by the chat template."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from structured_world import ROOMY, TIME, TOOLS, WEATHER, structured_config, tool_model_dir

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
# Makes the random model write hermes' syntax, so the parser has something to read.
HERMES = (
    r'Checking\.\n<tool_call>\n\{"name": "get_weather", "arguments": '
    r'\{"city": "(Paris|Rome)", "unit": "c"\}\}\n</tool_call>'
)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    return tool_model_dir(tiny_model_dir, tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def client(server_factory, tiny_config, model_dir) -> openai.OpenAI:
    options = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    url = server_factory(structured_config(tiny_config, model_dir, **options))
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, **kwargs: object):
    params = {"model": "tiny-llama", "messages": QUESTION, "max_tokens": ROOMY, "temperature": 0}
    return client.chat.completions.create(**(params | kwargs))


def streamed(client: openai.OpenAI, **kwargs: object) -> tuple[str, dict[int, dict], str]:
    """A stream assembled as a client does: (content, calls by index, last finish_reason)."""
    content, calls, finish = "", {}, None
    for chunk in ask(client, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:  # the first piece of a call says who it is
                    assert delta.id and delta.type == "function" and delta.function.name
                    calls[delta.index] = {"id": delta.id, "name": delta.function.name, "args": ""}
                calls[delta.index]["args"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish


def check_calls(calls) -> None:
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_calls_follow_the_tools_schemas_streamed_or_not(client) -> None:
    kwargs = {"tools": TOOLS, "tool_choice": "required"}
    one = ask(client, **kwargs, parallel_tool_calls=False, n=2, seed=5, temperature=1.0)
    for choice in one.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        check_calls(choice.message.tool_calls)
    # Seeded (a greedy random model repeats its call until max_tokens): two calls here.
    kwargs |= {"seed": 4, "temperature": 1.0}
    whole = ask(client, **kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and len(whole.message.tool_calls) == 2
    check_calls(whole.message.tool_calls)
    content, calls, finish = streamed(client, **kwargs)
    assert finish == "tool_calls" and not content
    assert [(c["name"], c["args"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]


def test_a_named_function_is_called_with_valid_arguments(client, tiny_adapter_name) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    for model in ("tiny-llama", tiny_adapter_name):
        reply = ask(client, model=model, tools=TOOLS, tool_choice=choice)
        [call] = reply.choices[0].message.tool_calls
        assert call.function.name == "get_time" and reply.choices[0].finish_reason == "stop"
        check_calls([call])
    _, calls, finish = streamed(client, tools=TOOLS, tool_choice=choice)
    assert [c["name"] for c in calls.values()] == ["get_time"] and finish == "stop"
    jsonschema.validate(json.loads(calls[0]["args"]), TIME["function"]["parameters"])


def test_auto_parses_hermes_calls_and_leaves_text_alone(client) -> None:
    reply = ask(client, tools=TOOLS, extra_body={"guided_regex": HERMES})  # auto by default
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking.\n"
    [call] = message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
    content, calls, finish = streamed(client, tools=TOOLS, extra_body={"guided_regex": HERMES})
    assert (content, finish) == ("Checking.\n", "tool_calls")
    assert [(c["name"], c["args"]) for c in calls.values()] == [
        (call.function.name, call.function.arguments)
    ]
    plain = ask(client, tools=TOOLS, tool_choice="auto", extra_body={"guided_regex": "[a-z]{4}"})
    assert plain.choices[0].message.tool_calls is None
    assert len(plain.choices[0].message.content) == 4
    none = ask(client, tools=TOOLS, tool_choice="none", extra_body={"guided_regex": HERMES})
    assert none.choices[0].message.tool_calls is None  # "none": the text stays text
    assert "<tool_call>" in none.choices[0].message.content


def test_a_tool_result_turn_is_rendered_by_the_chat_template(client, model_dir) -> None:
    from transformers import AutoTokenizer

    first = ask(
        client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    [call] = first.choices[0].message.tool_calls
    turn = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    reply = ask(client, messages=turn, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert reply.choices[0].message.content is not None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = tokenizer.apply_chat_template(
        [
            *QUESTION,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": json.loads(call.function.arguments),
                        },
                    }
                ],
            },
            {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": call.id},
        ],
        tools=[WEATHER],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert "<tool_call>get_weather {" in rendered and f"[{call.id}]" in rendered
    expected = len(tokenizer(rendered, add_special_tokens=False).input_ids)
    assert reply.usage.prompt_tokens == expected  # the server rendered exactly this
