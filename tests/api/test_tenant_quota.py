"""Per-tenant storage quotas through live servers: past ``--max-adapters-per-tenant`` or
``--max-adapter-mb-per-tenant`` an upload is a 409 (``quota_exceeded``) naming the limit;
replacing an adapter within the quota and other tenants' uploads are unaffected; the count comes
from the store, so a second replica over the same store holds the same line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from adapter_files import AdapterFiles
from tenant_world import World, call, put, start_world, tenant_config

from loraplex.config import Config

MAX_ADAPTERS = 4  # acme holds 3 after the world's uploads (support, acme-only, acme-doomed)


def quota_world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    root: Path,
    **lora: object,
) -> World:
    config = tenant_config(tiny_config, root, tiny_adapters_dir, lora_options=lora)
    return start_world(server_factory, config, tiny_adapters_dir)


def assert_quota_error(response, option: str) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] == "invalid_request_error"
    assert option in error["message"] and "acme" in error["message"]


@pytest.fixture(scope="module")
def world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    root = tmp_path_factory.mktemp("quota-count")
    return quota_world(
        server_factory, tiny_config, tiny_adapters_dir, root, max_adapters_per_tenant=MAX_ADAPTERS
    )


def test_the_count_quota_refuses_the_next_upload_and_names_the_limit(world: World) -> None:
    assert put(world, "acme", "fourth", 1).status_code == 201
    assert_quota_error(put(world, "acme", "fifth", 2), "--max-adapters-per-tenant")
    listing = call(world.url, "acme", "GET", "/v1/adapters").json()["data"]
    assert "fifth" not in {card["id"] for card in listing}  # nothing stored
    assert put(world, "acme", "fourth", 3, replace="true").status_code == 201  # no new adapter
    assert put(world, "globex", "fifth", 4).status_code == 201  # another tenant's own quota
    assert put(world, "admin", "ops-public", 5, public="true").status_code == 201  # public
    assert call(world.url, "acme", "DELETE", "/v1/adapters/acme-doomed").status_code == 200
    assert put(world, "acme", "fifth", 6).status_code == 201  # room again


def test_a_second_replica_counts_from_the_shared_store(
    world: World, server_factory: Callable[[Config], str]
) -> None:
    """A replica started now and never polling the store: acme's adapters at the limit are not
    in its catalog as uploads made elsewhere later would not be, but the store counts them."""
    replica = dataclasses.replace(world, url=server_factory(world.config))
    assert_quota_error(put(replica, "acme", "via-replica", 7), "--max-adapters-per-tenant")
    assert call(world.url, "acme", "DELETE", "/v1/adapters/fifth").status_code == 200
    assert put(replica, "acme", "via-replica", 8).status_code == 201
    assert_quota_error(put(world, "acme", "sixth", 9), "--max-adapters-per-tenant")


@pytest.fixture(scope="module")
def bytes_world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    """Room for 3.5 tiny adapters per tenant: acme's three fit, a fourth does not."""
    files = AdapterFiles.read(tiny_adapters_dir / "tiny-a")
    size = len(files.config) + len(files.weights)  # what the quota counts of one adapter
    root = tmp_path_factory.mktemp("quota-bytes")
    limit = int(size * 3.5)
    return quota_world(
        server_factory, tiny_config, tiny_adapters_dir, root, max_adapter_bytes_per_tenant=limit
    )


def test_the_bytes_quota_refuses_an_upload_past_it(bytes_world: World) -> None:
    assert_quota_error(put(bytes_world, "acme", "fourth", 1), "--max-adapter-mb-per-tenant")
    assert put(bytes_world, "acme", "support", 2, replace="true").status_code == 201
    assert put(bytes_world, "globex", "second", 3).status_code == 201
