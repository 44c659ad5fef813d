"""What an anonymous scrape shows: tenants and their adapters as opaque, stable labels; public
adapters and the fixed labels by name (the gateway's endpoint picker matches public names)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from loraplex import metrics
from loraplex.metrics import scrape as metrics_scrape
from loraplex.metrics.labels import PrivateLabels, label_secret

PRIVATE = PrivateLabels(label_secret(["a" * 64, "b" * 64]))
STATS = {
    "num_running": 2,
    "num_waiting": 1,
    "block_size": 16,
    "num_blocks": 64,
    "max_loras": 4,
    "running_adapters": ["acme/plan", "pub"],
    "waiting_adapters": ["globex/plan"],
    "tiers": {"device": ["acme/plan", "pub"], "host": ["acme/plan", "globex/plan", "pub"]},
}


def samples(body: bytes, family: str) -> list:
    found = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return found[family].samples


def test_private_labels_are_opaque_stable_and_distinct() -> None:
    acme, globex = PRIVATE.adapter("acme/plan"), PRIVATE.adapter("globex/plan")
    assert acme.startswith("private-") and len(acme) == len("private-") + 12
    assert acme != globex and "plan" not in acme and "acme" not in acme
    assert PRIVATE.adapter("acme/plan") == acme  # the same name, the same label
    same_keys = PrivateLabels(label_secret(["b" * 64, "a" * 64]))  # order does not matter
    assert same_keys.adapter("acme/plan") == acme
    other_keys = PrivateLabels(label_secret(["c" * 64]))
    assert other_keys.adapter("acme/plan") != acme  # another keys file, another secret
    assert [PRIVATE.adapter(n) for n in ("pub", "base", "other", "mix")] == [
        "pub",
        "base",
        "other",
        "mix",
    ]
    assert PRIVATE.tenant("acme").startswith("tenant-") and "acme" not in PRIVATE.tenant("acme")


def test_the_anonymous_scrape_hides_tenants_and_their_adapters() -> None:
    metrics.record_finished("stop", 0.1, adapter="acme/plan")
    metrics.record_rate_limited("acme")
    body, _ = metrics_scrape.scrape(STATS, PRIVATE)
    text = body.decode()
    assert "acme" not in text and "globex" not in text and "plan" not in text
    (lora,) = samples(body, "vllm:lora_requests_info")
    acme, globex = PRIVATE.adapter("acme/plan"), PRIVATE.adapter("globex/plan")
    assert lora.labels["running_lora_adapters"] == f"{acme},pub"  # the gateway matches "pub"
    assert lora.labels["waiting_lora_adapters"] == globex
    resident = {
        (s.labels["adapter"], s.labels["tier"]) for s in samples(body, "loraplex_adapter_resident")
    }
    assert {(acme, "device"), ("pub", "device"), (globex, "host")} <= resident
    tenants = {s.labels["tenant"] for s in samples(body, "loraplex_rate_limited_requests")}
    assert PRIVATE.tenant("acme") in tenants
    plain, _ = metrics_scrape.scrape(STATS)  # the full view: every name as it is
    assert "acme/plan" in plain.decode() and 'tenant="acme"' in plain.decode()
