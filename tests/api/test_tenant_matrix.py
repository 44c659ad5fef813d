"""The whole key x role x tenant matrix as one table, through a live server and the real openai
client: who may call which route (401, 403) and whose adapters each tenant can reach (404)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from adapter_files import PROMPT
from tenant_world import World, call, client, headers, put, world_fixture

world = world_fixture("tenant-matrix")

# (case, who, method, path or model, request body, expected status). Uploads are
# ("upload", (name, form fields)); generation goes through the openai client.
GEN = "generate"
MATRIX = [
    ("no key: models", None, "GET", "/v1/models", None, 401),
    ("no key: completion", None, GEN, "tiny-llama", None, 401),
    ("unknown key: completion", "unknown", GEN, "tiny-llama", None, 401),
    ("no key: adapters", None, "GET", "/v1/adapters", None, 401),
    ("no key: /health", None, "GET", "/health", None, 200),
    ("no key: /metrics (the anonymous view)", None, "GET", "/metrics", None, 200),
    ("metrics key: /metrics", "scraper", "GET", "/metrics", None, 200),
    ("metrics key: models", "scraper", "GET", "/v1/models", None, 403),
    ("metrics key: completion", "scraper", GEN, "tiny-llama", None, 403),
    ("metrics key: list adapters", "scraper", "GET", "/v1/adapters", None, 403),
    ("user key: /metrics", "acme", "GET", "/metrics", None, 403),
    ("unknown key: /metrics", "unknown", "GET", "/metrics", None, 401),
    ("inference (hashed key): base completion", "acme-app", GEN, "tiny-llama", None, 200),
    ("inference: own adapter", "acme-app", GEN, "support", None, 200),
    ("inference: public adapter", "acme-app", GEN, "tiny-a", None, 200),
    ("inference: models", "acme-app", "GET", "/v1/models", None, 200),
    ("inference: list adapters", "acme-app", "GET", "/v1/adapters", None, 403),
    ("inference: upload", "acme-app", "upload", ("app-up", {}), None, 403),
    ("inference: delete own", "acme-app", "DELETE", "/v1/adapters/acme-only", None, 403),
    ("user: own adapter", "acme", GEN, "acme-only", None, 200),
    ("user: own adapter as tenant/name", "acme", GEN, "acme/acme-only", None, 200),
    ("user: list adapters", "acme", "GET", "/v1/adapters", None, 200),
    ("user: get own", "acme", "GET", "/v1/adapters/acme-only", None, 200),
    ("user: upload own", "acme", "upload", ("acme-new", {}), None, 201),
    ("user: upload existing, no replace", "acme", "upload", ("acme-only", {}), None, 409),
    ("user: replace own", "acme", "upload", ("acme-only", {"replace": "true"}), None, 201),
    ("user: upload a public name", "acme", "upload", ("tiny-a", {}), None, 409),
    ("user: upload public=true", "acme", "upload", ("acme-pub", {"public": "true"}), None, 403),
    ("user: upload pinned=true", "acme", "upload", ("acme-pin", {"pinned": "true"}), None, 403),
    ("user: upload as another tenant", "acme", "upload", ("globex/x", {}), None, 403),
    ("user: delete own", "acme", "DELETE", "/v1/adapters/acme-doomed", None, 200),
    ("user: delete public", "acme", "DELETE", "/v1/adapters/tiny-a", None, 403),
    ("user: load from roots", "acme", "POST", "/v1/adapters/load", "in-root", 403),
    ("user: vLLM load", "acme", "POST", "/v1/load_lora_adapter", "in-root", 403),
    ("user: merge own", "acme", "POST", "/v1/adapters/support/merge", None, 403),
    ("other tenant: generate", "globex", GEN, "acme-only", None, 404),
    ("other tenant: generate tenant/name", "globex", GEN, "acme/acme-only", None, 404),
    ("other tenant: in a mix", "globex", "mix", "acme-only", None, 404),
    ("other tenant: get", "globex", "GET", "/v1/adapters/acme-only", None, 404),
    ("other tenant: get tenant/name", "globex", "GET", "/v1/adapters/acme/acme-only", None, 404),
    ("other tenant: delete", "globex", "DELETE", "/v1/adapters/acme-only", None, 404),
    ("other tenant: vLLM unload", "globex", "POST", "/v1/unload_lora_adapter", "acme-only", 404),
    ("other tenant: /generate", "globex", "POST", "/generate", "acme-only", 404),
    ("nobody's: get", "globex", "GET", "/v1/adapters/nothing-here", None, 404),
    ("admin: another tenant's adapter", "admin", GEN, "acme/acme-only", None, 200),
    ("admin: get tenant/name", "admin", "GET", "/v1/adapters/globex/support", None, 200),
    ("admin: bare name of another tenant's", "admin", GEN, "acme-only", None, 404),
    (
        "admin: merge bare name of another's",
        "admin",
        "POST",
        "/v1/adapters/acme-only/merge",
        None,
        404,
    ),
    ("admin: merge tenant/name", "admin", "POST", "/v1/adapters/acme/support/merge", None, 200),
    ("admin: unmerge tenant/name", "admin", "POST", "/v1/adapters/acme/support/unmerge", None, 200),
    ("admin: load from roots (public)", "admin", "POST", "/v1/adapters/load", "in-root", 201),
    ("admin: upload public", "admin", "upload", ("ops-pub", {"public": "true"}), None, 201),
    ("admin: upload for a tenant", "admin", "upload", ("globex/from-ops", {}), None, 201),
    ("admin: upload pinned", "admin", "upload", ("ops-pin", {"pinned": "true"}), None, 201),
    ("user: use an admin's public upload", "globex", GEN, "ops-pub", None, 200),
    ("user: take an admin's public name", "globex", "upload", ("ops-pub", {}), None, 409),
    ("user: a tenant's upload by an admin", "globex", GEN, "from-ops", None, 200),
    ("x-api-key: user lists adapters", "globex", "x-api-key", "/v1/adapters", None, 200),
    ("x-api-key: unknown key", "unknown", "x-api-key", "/v1/models", None, 401),
]


def attempt(world: World, who: str | None, method: str, target: object, body: object) -> int:
    url = world.url
    if method == GEN:
        if who is None:  # the SDK always sends a key: send none at all over raw HTTP
            payload = {"model": target, "prompt": PROMPT, "max_tokens": 2}
            return httpx.post(f"{url}/v1/completions", json=payload, timeout=120).status_code
        try:
            client(url, who).completions.create(model=str(target), prompt=PROMPT, max_tokens=2)
        except openai.APIStatusError as exc:  # the SDK parsed the one error shape
            assert isinstance(exc.body, dict) and set(exc.body) >= {"message", "code"}
            return exc.status_code
        return 200
    if method == "mix":
        payload = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 2}
        payload["adapters"] = [{"name": target, "weight": 1.0}]
        return call(url, who, "POST", "/v1/completions", json=payload).status_code
    if method == "x-api-key":
        assert who is not None
        response = httpx.get(url + str(target), headers=headers(who, "x-api-key"), timeout=60)
        return response.status_code
    if method == "upload":
        name, fields = target  # type: ignore[misc]
        assert who is not None
        return put(world, who, name, 7, **fields).status_code
    if target == "/generate":
        payload = {"inputs": PROMPT, "parameters": {"adapter_id": body, "max_new_tokens": 2}}
        return call(url, who, "POST", "/generate", json=payload).status_code
    json_body: dict | None = None
    path = str(Path(world.config.lora.adapter_roots[0]) / str(body))
    if target == "/v1/adapters/load":
        json_body = {"name": f"loaded-{who}", "path": path}
    elif target == "/v1/load_lora_adapter":
        json_body = {"lora_name": f"vllm-{who}", "lora_path": path}
    elif target == "/v1/unload_lora_adapter":
        json_body = {"lora_name": body}
    response = call(url, who, method, str(target), json=json_body)
    if response.status_code >= 400:
        error = response.json()["error"]  # the one OpenAI error shape
        assert set(error) == {"message", "type", "param", "code"}
        if response.status_code == 401:
            assert error["code"] == "invalid_api_key"
        if response.status_code == 403:
            assert error["type"] == "permission_error"
    return response.status_code


@pytest.mark.parametrize(
    ("case", "who", "method", "target", "body", "expected"), MATRIX, ids=[row[0] for row in MATRIX]
)
def test_key_role_tenant_matrix(
    world: World,
    case: str,
    who: str | None,
    method: str,
    target: object,
    body: object,
    expected: int,
) -> None:
    got = attempt(world, who, method, target, body)
    print(f"MATRIX | {case} | {expected} | {got}")
    assert got == expected, case
