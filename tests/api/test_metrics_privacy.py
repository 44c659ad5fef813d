"""``/metrics`` on a server with tenants, through a live server: an anonymous scrape (what the
gateway's endpoint picker and a keyless Prometheus read) names no tenant and no tenant's adapter,
while public adapters keep their plain names (the gateway's LoRA affinity matches them); a
``metrics`` or ``admin`` key reads the full view; a tenant's key is refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tenant_world import KEYS, World, call, greedy, world_fixture

from loraplex.config import Config

# Other modules in the session may have used up the default 32 adapter labels.
world = world_fixture("metrics-privacy", metrics_adapter_labels=1000)

SECRETS = ("acme", "globex", "support", "acme-only", "acme-doomed")  # tenants, private names


def label_values(text: str) -> set[str]:
    """Every label value of a scrape, comma-separated lists (the gateway's) split."""
    values: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                values.update(value.split(","))
    return values


def adapters_labelled(text: str) -> set[str]:
    """The ``adapter`` label values of the per-adapter counter and the residency gauge."""
    found = set()
    for family in text_string_to_metric_families(text):
        if family.name in ("loraplex_adapter_requests", "loraplex_adapter_resident"):
            found |= {sample.labels["adapter"] for sample in family.samples}
    return found


@pytest.fixture(scope="module")
def used(world: World) -> World:
    """Requests on a private adapter of each tenant and on a public one."""
    greedy(world.url, "acme", "acme-only")
    greedy(world.url, "globex", "support")
    greedy(world.url, "acme", "tiny-a")
    return world


def test_an_anonymous_scrape_names_no_tenant_and_no_private_adapter(used: World) -> None:
    text = httpx.get(f"{used.url}/metrics", timeout=30).text
    leaked = {v for v in label_values(text) if any(secret in v for secret in SECRETS)}
    assert leaked == set()
    assert not any(secret in text for secret in ("acme", "globex"))
    labelled = adapters_labelled(text)
    assert "tiny-a" in labelled  # a public adapter keeps its name (the gateway matches it)
    private = {label for label in labelled if label.startswith("private-")}
    assert len(private) >= 2  # acme's and globex's adapters: counted, but opaque
    again = adapters_labelled(httpx.get(f"{used.url}/metrics", timeout=30).text)
    assert private <= again  # stable labels: a series stays one series


@pytest.mark.parametrize("who", ["admin", "scraper"])
def test_a_metrics_or_admin_key_reads_the_full_view(used: World, who: str) -> None:
    response = call(used.url, who, "GET", "/metrics")
    assert response.status_code == 200
    labelled = adapters_labelled(response.text)
    assert {"acme/acme-only", "globex/support", "tiny-a"} <= labelled
    assert not any(label.startswith("private-") for label in labelled)


@pytest.mark.parametrize(("who", "status"), [("acme", 403), ("acme-app", 403), ("unknown", 401)])
def test_other_keys_are_refused(used: World, who: str, status: int) -> None:
    response = call(used.url, who, "GET", "/metrics")
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_metrics_key_may_do_nothing_else(used: World) -> None:
    assert call(used.url, "scraper", "GET", "/v1/models").status_code == 403
    payload = {"model": "tiny-a", "prompt": "x", "max_tokens": 2}
    assert call(used.url, "scraper", "POST", "/v1/completions", json=payload).status_code == 403
    assert KEYS["scraper"] not in httpx.get(f"{used.url}/metrics", timeout=30).text


def test_metrics_require_key_refuses_the_anonymous_view(
    server_factory: Callable[[Config], str], tiny_config: Config
) -> None:
    server = dataclasses.replace(
        tiny_config.server, api_key="sk-only-admin", metrics_require_key=True
    )
    url = server_factory(dataclasses.replace(tiny_config, server=server))
    anonymous = httpx.get(f"{url}/metrics", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    keyed = httpx.get(f"{url}/metrics", headers={"x-api-key": "sk-only-admin"}, timeout=30)
    assert keyed.status_code == 200 and "vllm:num_requests_running" in keyed.text
