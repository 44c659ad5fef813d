"""The S3 adapter store on a real (local, moto) S3 server: round trips, replace, delete, half
uploads, tampered objects, and names that try to leave the prefix."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_sources import CONFIG, META, WEIGHTS, source, weights

from loraplex.adapters.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.adapters.store import open_store
from loraplex.adapters.store.s3 import S3AdapterStore


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip(
        "moto.server", reason="moto is not installed: pip install 'moto[server]' boto3"
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_endpoint: str) -> str:
    """Dummy credentials, the moto endpoint in AWS_ENDPOINT_URL, no ~/.aws files."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    return s3_endpoint


@pytest.fixture
def s3(s3_env: str, tmp_path: Path) -> S3AdapterStore:
    """An S3 store over a fresh bucket, under a two-level prefix."""
    import boto3

    bucket = f"loraplex-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}/team/adapters/", tmp_path / "cache")
    assert isinstance(store, S3AdapterStore)
    return store


def keys(store: S3AdapterStore) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_s3_round_trip(s3: S3AdapterStore, tmp_path: Path) -> None:
    s3.put("a", source(tmp_path, "v1"), {"description": "first"})
    assert s3.names() == ["a"] and s3.exists("a") and not s3.exists("b")
    folder = s3.fetch("a")
    assert folder.parent == s3.cache_dir and weights(folder) == b"v1" * 100
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS, META]
    assert s3.metadata("a")["description"] == "first"
    assert s3.fetch("a") == folder  # cached by name + version
    pointer = json.loads(s3._get("team/adapters/a/current.json") or b"")
    version_keys = [f"team/adapters/a.{pointer['version']}/{f}" for f in (CONFIG, WEIGHTS, META)]
    assert keys(s3) == sorted(["team/adapters/a/current.json", *version_keys])


def test_s3_replace_publishes_new_version_and_drops_old(s3: S3AdapterStore, tmp_path) -> None:
    s3.put("a", source(tmp_path, "v1"), {})
    old = s3.fetch("a")
    s3.put("a", source(tmp_path, "v2"), {})
    new = s3.fetch("a")
    assert new != old and weights(new) == b"v2" * 100 and not old.exists()
    assert len(keys(s3)) == 4  # pointer + the three files of the current version only


def test_s3_delete(s3: S3AdapterStore, tmp_path: Path) -> None:
    s3.put("a", source(tmp_path, "v1"), {})
    s3.put("a.b", source(tmp_path, "v1"), {})  # a name that extends "a" is untouched
    s3.delete("a")
    assert s3.names() == ["a.b"] and not s3.exists("a")
    assert all(k.startswith("team/adapters/a.b") for k in keys(s3))
    for call in (s3.fetch, s3.metadata, s3.delete):
        with pytest.raises(AdapterNotFoundError):
            call("a")


def test_s3_half_uploaded_version_is_invisible(s3: S3AdapterStore, tmp_path, monkeypatch) -> None:
    """A crash before the pointer is written: readers keep the old version, or see nothing."""
    s3.put("a", source(tmp_path, "v1"), {})
    real_put = s3.client.put_object

    def put_object(**kw: object) -> object:
        if str(kw["Key"]).endswith("/current.json"):
            raise ConnectionError("simulated crash")
        return real_put(**kw)

    monkeypatch.setattr(s3.client, "put_object", put_object)
    for name in ("a", "new"):
        with pytest.raises(ConnectionError):
            s3.put(name, source(tmp_path, "v2"), {})
    assert s3.names() == ["a"] and not s3.exists("new")
    assert weights(s3.fetch("a")) == b"v1" * 100


@pytest.mark.parametrize("pointer", [b'{"version": "../../etc"}', b"[]", b"not json"])
def test_s3_corrupt_pointer_is_refused(s3: S3AdapterStore, tmp_path: Path, pointer: bytes) -> None:
    s3.client.put_object(Bucket=s3.bucket, Key="team/adapters/a/current.json", Body=pointer)
    with pytest.raises(AdapterValidationError, match="corrupt pointer"):
        s3.fetch("a")
    assert list(s3.cache_dir.iterdir()) == []


def test_s3_tampered_objects_are_refused(s3: S3AdapterStore, tmp_path: Path) -> None:
    s3.put("a", source(tmp_path, "v1"), {})
    key = next(k for k in keys(s3) if k.endswith(WEIGHTS))
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"evil")
    with pytest.raises(AdapterValidationError, match="does not match"):
        s3.fetch("a")
    assert list(s3.cache_dir.iterdir()) == []


@pytest.mark.parametrize("method", ["exists", "fetch", "metadata", "delete", "put"])
def test_s3_names_cannot_leave_the_prefix(s3: S3AdapterStore, tmp_path: Path, method) -> None:
    args = ("../x", source(tmp_path, "v"), {}) if method == "put" else ("../x",)
    with pytest.raises(AdapterValidationError, match="invalid adapter name"):
        getattr(s3, method)(*args)
    assert keys(s3) == []


def test_s3_cache_leftovers_are_cleaned(s3: S3AdapterStore) -> None:
    (s3.cache_dir / ".tmp-0123456789abcdef-a").mkdir()
    again = S3AdapterStore(f"s3://{s3.bucket}/team/adapters", s3.cache_dir)
    assert list(again.cache_dir.iterdir()) == []


def test_s3_url_must_name_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        S3AdapterStore("s3:///prefix", tmp_path, client=object())


def test_s3_tenants_namesakes_are_apart(s3: S3AdapterStore, tmp_path: Path) -> None:
    """acme/support and globex/support: two pointers, two contents, each deleted alone."""
    s3.put("acme/support", source(tmp_path, "acm"), {"owner": "acme"})
    s3.put("globex/support", source(tmp_path, "glx"), {"owner": "globex"})
    assert s3.names() == ["acme/support", "globex/support"]
    assert weights(s3.fetch("acme/support")) == b"acm" * 100
    assert weights(s3.fetch("globex/support")) == b"glx" * 100
    assert s3.metadata("globex/support")["owner"] == "globex"
    s3.delete("acme/support")
    assert s3.names() == ["globex/support"] and not s3.exists("acme/support")


def test_s3_sizes_count_the_current_version_of_one_tenants_adapters(
    s3: S3AdapterStore, tmp_path: Path
) -> None:
    for name, body in (("support", "pub"), ("acme/a", "aa"), ("acmex/c", "c")):
        s3.put(name, source(tmp_path, body), {"owner": name.rpartition("/")[0] or None})
    s3.put("acme/a", source(tmp_path, "aaa"), {"owner": "acme"})  # replaced: the new version
    config = len((s3.fetch("acme/a") / CONFIG).read_bytes())
    assert s3.sizes("acme") == {"acme/a": config + 300}
    assert s3.sizes("globex") == {}
