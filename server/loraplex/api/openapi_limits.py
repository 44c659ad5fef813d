"""``/openapi.json`` with the limits only the loaded model knows: the vocabulary (token ids in a
prompt) and the context length (``max_tokens``). FastAPI builds the schema once, from the
pydantic models, before any model is loaded; this fills those numbers in on the first request
for it after the engine is up, so the schema states what the server really accepts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

# (component, property) whose integers are token ids, and those that count generated tokens.
TOKEN_ID_FIELDS = (("CompletionRequest", "prompt"), ("CompletionRequest", "stop_token_ids"))
NEW_TOKEN_FIELDS = (
    ("CompletionRequest", "max_tokens"),
    ("ChatCompletionRequest", "max_tokens"),
    ("ChatCompletionRequest", "max_completion_tokens"),
    ("GenerateParameters", "max_new_tokens"),
)


def _integers(node: Any) -> list[dict]:
    """Every ``{"type": "integer"}`` schema inside ``node``."""
    if isinstance(node, list):
        return [found for item in node for found in _integers(item)]
    if not isinstance(node, dict):
        return []
    here = [node] if node.get("type") == "integer" else []
    return here + [found for value in node.values() for found in _integers(value)]


def apply_limits(schema: dict, vocab_size: int, max_model_len: int) -> None:
    """Token ids below ``vocab_size``; at most ``max_model_len - 1`` new tokens (a prompt has
    at least one token). Prompt plus new tokens within the context stays a rule across fields,
    stated in the fields' descriptions."""
    components = schema.get("components", {}).get("schemas", {})
    for component, prop in TOKEN_ID_FIELDS:
        for integer in _integers(components.get(component, {}).get("properties", {}).get(prop)):
            integer["maximum"] = vocab_size - 1
    for component, prop in NEW_TOKEN_FIELDS:
        field = components.get(component, {}).get("properties", {}).get(prop)
        if field is not None:
            field["maximum"] = max_model_len - 1


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the model's limits once the engine is loaded."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        engine = getattr(app.state, "engine", None)
        if engine is not None and not getattr(app.state, "openapi_limited", False):
            apply_limits(schema, engine.vocab_size, engine.max_model_len)
            app.state.openapi_limited = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
