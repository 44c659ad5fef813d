"""What the structured-output and tool-call tests share: a copy of the tiny model whose chat
template renders tools, tool calls and tool results; a server on it; bounded schemas a random
model finishes well within its tokens; the tools the tool tests offer."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from loraplex.config import Config, StructuredConfig

TOOL_TEMPLATE = (
    "{% if tools %}tools:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}\n"
    "{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>{{ c['function']['name'] }} "
    "{{ c['function']['arguments'] | tojson }}</tool_call>{% endfor %}"
    "{% if m.get('tool_call_id') %} [{{ m['tool_call_id'] }}]{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# Room for a bounded JSON object in the tiny byte-level vocabulary (~60 tokens).
ROOMY = 160


class Person(BaseModel):
    """What ``parse()`` asks for. Strings are bounded by a pattern (xgrammar 0.2.9 lets a
    maxLength-only string hold raw control characters, which strict JSON parsers refuse)."""

    name: str = Field(pattern=r"^[a-z]{1,6}$")
    age: int = Field(ge=0, le=120)
    color: Literal["red", "green", "blue"]
    tags: list[bool] = Field(max_length=2)


ORDER = {
    "type": "object",
    "properties": {
        "item": {"enum": ["tea", "coffee", "water"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
        "sizes": {
            "type": "array",
            "items": {"enum": ["s", "m", "l"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "extra": {
            "type": "object",
            "properties": {"hot": {"type": "boolean"}, "sugar": {"type": "integer", "maximum": 3}},
            "required": ["hot", "sugar"],
        },
    },
    "required": ["item", "count", "sizes", "extra"],
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome", "Oslo"]},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}},
            "required": ["hour"],
        },
    },
}
TOOLS = [WEATHER, TIME]


def tool_model_dir(tiny_model_dir: Path, root: Path) -> Path:
    """The tiny model with :data:`TOOL_TEMPLATE` (same folder name: the adapter's base)."""
    from transformers import AutoTokenizer

    path = root / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TOOL_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def structured_config(config: Config, model_dir: Path, **options: object) -> Config:
    """``config`` serving ``model_dir`` with compact JSON and ``options``."""
    model = dataclasses.replace(config.model, model=str(model_dir))
    structured = StructuredConfig(max_whitespace=0, **options)  # type: ignore[arg-type]
    return dataclasses.replace(config, model=model, structured=structured)
