"""The tool-call parsers on text: each format's calls and content, and a stream chopped
anywhere (markers and JSON strings split included) adding up to the whole response."""

from __future__ import annotations

import random

import pytest

from loraplex.api.tools.parsers import PARSERS, NamedParser, RequiredParser, ToolCallParser

CASES = [
    (
        lambda: PARSERS["hermes"](),
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n<tool_call>\n{"arguments": {"q": "a \\"}\\" <tool_call>"}, "name": "find"}'
        "\n</tool_call>",
        (
            "Let me check.\n",
            [("get_weather", '{"city": "Paris"}'), ("find", '{"q": "a \\"}\\" <tool_call>"}')],
        ),
    ),
    (
        lambda: PARSERS["hermes"](),
        "Just text, a < sign and <b>.",
        ("Just text, a < sign and <b>.", []),
    ),
    (
        lambda: PARSERS["llama3_json"](),
        '{"name": "f", "parameters": {"x": [1, {"y": null}]}}; {"name": "g", "parameters": {}}',
        (None, [("f", '{"x": [1, {"y": null}]}'), ("g", "{}")]),
    ),
    (
        lambda: PARSERS["llama3_json"](),
        '<|python_tag|>{"name": "f", "parameters": {"x": 1}}',
        (None, [("f", '{"x": 1}')]),
    ),
    (lambda: PARSERS["llama3_json"](), "Hello {not a call}", ("Hello {not a call}", [])),
    (
        lambda: PARSERS["mistral"](),
        'Sure. [TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, '
        '{"name": "g", "arguments": "{\\"b\\": 2}"}]',
        ("Sure. ", [("f", '{"a": 1}'), ("g", '{"b": 2}')]),  # quoted arguments, decoded
    ),
    (
        lambda: PARSERS["mistral"](),
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]other{"x": {"y": 1}}',
        (None, [("get_weather", '{"city": "Paris"}'), ("other", '{"x": {"y": 1}}')]),
    ),
    (
        lambda: RequiredParser(),
        '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]',
        (None, [("f", '{"a": 1}'), ("g", "{}")]),
    ),
    (
        lambda: RequiredParser(parallel=False),
        '[{"name": "f", "parameters": {}}, {"name": "g"}]',
        (None, [("f", "{}")]),
    ),
    (lambda: NamedParser("f"), '{"a": 1, "b": "x}"}', (None, [("f", '{"a": 1, "b": "x}"}')])),
    (lambda: RequiredParser(), '[{"name": "f", "parameters": {"a": 1', (None, [("f", '{"a": 1')])),
]


def feed(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[tuple[str, str]], set]:
    """A client's view of a stream: (content, [(name, arguments)], ids)."""
    content, calls, ids = "", {}, set()
    for piece in [*pieces, None]:
        text, deltas = parser.feed(piece) if piece is not None else parser.finish()
        content += text
        for delta in deltas:
            if "id" in delta:
                ids.add(delta["id"])
                calls[delta["index"]] = [delta["function"]["name"], ""]
            calls[delta["index"]][1] += delta["function"]["arguments"]
    return content, [tuple(call) for _, call in sorted(calls.items())], ids


@pytest.mark.parametrize(("make", "text", "expected"), CASES)
def test_every_chopping_of_a_stream_adds_up_to_the_whole(make, text, expected) -> None:
    whole = make()
    one_piece = feed(whole, [text])
    content, calls = whole.message()
    assert (content, [(name, args) for _, name, args in calls]) == expected
    assert one_piece[:2] == (content or "", expected[1])
    ids = one_piece[2]
    assert ids == {call_id for call_id, _, _ in calls}
    rng = random.Random(text)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(12, len(text) - 1))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        got_content, got_calls, _ = feed(make(), pieces)
        assert got_calls == expected[1]
        assert got_content == (expected[0] or "")
    per_char = feed(make(), list(text))
    assert per_char[:2] == (expected[0] or "", expected[1])


def test_mistral_ids_are_nine_alphanumerics_and_others_openai_style() -> None:
    mistral, hermes = PARSERS["mistral"](), PARSERS["hermes"]()
    assert len(mistral.new_id()) == 9 and mistral.new_id().isalnum()
    assert hermes.new_id().startswith("call_")
