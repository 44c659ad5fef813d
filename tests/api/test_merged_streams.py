"""Issue 10, item 5: a stream keeps the weights it started on. Unmerging or deleting its merged
adapter (or deleting a dynamic one) after a few tokens changes nothing in the rest of its text;
new requests run dynamically (or get a 404) at once, and the merged copy goes after the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from adapter_files import PROMPT, Env, assert_error, complete, env_fixture, get, post, text, upload
from attack_helpers import bystanders

env = env_fixture("merged-streams")
LONG = {"temperature": 0.0, "max_tokens": 150, "ignore_eos": True}


def stream_text(env: Env, model: str, action: Callable[[], None] = lambda: None) -> str:
    """A greedy stream of ``model``; ``action`` runs once the first token has arrived."""
    payload = {"model": model, "prompt": PROMPT, "stream": True, **LONG}
    with httpx.stream("POST", f"{env.url}/v1/completions", json=payload, timeout=120) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        events = [next(line for line in lines if line.startswith("data: "))]
        action()
        events += [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks[-1]
    return "".join(c["choices"][0]["text"] for c in chunks)


def location(env: Env, name: str) -> dict:
    return get(env.url, f"/v1/adapters/{name}").json()["location"]


@pytest.mark.parametrize("change", ["unmerge", "delete", "delete-dynamic"])
def test_a_stream_keeps_its_weights(
    env: Env, base_name: str, tiny_adapter_name: str, change: str
) -> None:
    name = f"held-{change}"
    assert upload(env.url, name, files=env.files.perturbed(seed=21)).status_code == 201
    merged = change != "delete-dynamic"
    if merged:
        assert post(env.url, f"/v1/adapters/{name}/merge").status_code == 200
    expected = stream_text(env, name)  # uninterrupted, on the same weights
    seen: list[dict] = []

    def interrupt() -> None:
        if change == "unmerge":
            response = post(env.url, f"/v1/adapters/{name}/unmerge")
            assert response.status_code == 200
            seen.append(response.json()["location"])
        else:
            assert httpx.delete(f"{env.url}/v1/adapters/{name}", timeout=60).status_code == 200

    bystander = {m: text(complete(env.url, m)) for m in (base_name, tiny_adapter_name)}
    with bystanders(env.url, bystander):
        assert stream_text(env, name, interrupt) == expected
    if change == "unmerge":
        # While the stream ran, new requests were dynamic but its copy was still held.
        assert seen[0]["merged"] is False and seen[0]["merged_bytes"] > 0
        assert location(env, name)["merged_bytes"] == 0  # dropped once the stream ended
        assert httpx.delete(f"{env.url}/v1/adapters/{name}", timeout=60).status_code == 200
    else:
        assert_error(complete(env.url, name), 404, name)
    # The copy is gone (the cap is 1): another adapter can be merged now.
    assert post(env.url, f"/v1/adapters/{tiny_adapter_name}/merge").status_code == 200
    assert post(env.url, f"/v1/adapters/{tiny_adapter_name}/unmerge").status_code == 200
