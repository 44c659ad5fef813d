"""The S3 adapter store: ``s3://bucket/prefix``, one immutable version per content, published by
rewriting a small pointer object last. boto3 is imported only when a store is created."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from loraplex.adapters.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.adapters.store.files import (
    FILES,
    METADATA_FILE,
    TMP,
    full_metadata,
    is_complete,
    is_name,
    remove,
    sha256,
    work_dir,
)
from loraplex.adapters.tenancy import STORED_SEP, AdapterId, stored_name, validate_tenant

try:
    from botocore.exceptions import ClientError
except ImportError:  # boto3 is optional: only S3 stores need it

    class ClientError(Exception):  # type: ignore[no-redef]
        response: dict = {}  # noqa: RUF012


POINTER = "current.json"
_VERSION = re.compile(r"[0-9a-f]{64}")

__all__ = ["POINTER", "S3AdapterStore"]


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _version(files: dict[str, str]) -> str:
    """A version id from the sha256 of every file: new content -> new objects, never overwrites."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


class S3AdapterStore:
    """``s3://bucket/prefix``: files under ``<prefix>/<stored>.<version>/``, published by writing
    ``<prefix>/<stored>/current.json`` (``{"version": ...}``) last, so readers only ever see
    complete versions. ``fetch`` downloads into ``cache_dir/<stored>.<version>`` atomically.
    Methods take qualified names; ``<stored>`` is ``name`` or ``tenant@name`` (one flat prefix).

    A download that races a replace or delete re-reads the pointer (up to three times).
    A folder returned by ``fetch`` stays until a later fetch of the same name finds a newer version.
    """

    def __init__(
        self, url: str, cache_dir: str | Path, client: Any = None, endpoint_url: str | None = None
    ) -> None:
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if match is None:
            raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
        self.bucket, self.prefix = match[1], match[2].strip("/")
        if client is None:
            import boto3

            endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
            client = boto3.client("s3", endpoint_url=endpoint)
        self.client = client
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.cache_dir.glob(TMP + "*"):
            remove(entry)
        self._lock = threading.Lock()

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def _pointer(self, name: str) -> str | None:
        body = self._get(self._key(stored_name(name), POINTER))
        if body is None:
            return None
        try:
            version = json.loads(body)["version"]
        except (ValueError, TypeError, KeyError):
            version = None
        if not isinstance(version, str) or _VERSION.fullmatch(version) is None:
            raise AdapterValidationError(f"adapter {name!r}: corrupt pointer in the store")
        return version

    def names(self) -> list[str]:
        return sorted(self.listing())

    def listing(self) -> dict[str, str]:
        """name -> the ETag of its pointer (one LIST request per 1000 objects): publishing a new
        version rewrites the pointer, so the ETag changes."""
        base = self._key("") + "/" if self.prefix else ""
        found = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        ):
            for item in page.get("Contents", []):
                name = item["Key"][len(base) :].removesuffix("/" + POINTER)
                if item["Key"].endswith("/" + POINTER) and is_name(name):
                    found[AdapterId.from_stored(name).qualified] = item.get("ETag", "")
        return found

    def sizes(self, tenant: str) -> dict[str, int]:
        """Qualified name -> bytes of its config and weights objects, for each adapter of
        ``tenant``: one LIST of ``<prefix>/<tenant>@`` (sizes) and one pointer GET per adapter
        (which version is current)."""
        base = self._key("") + "/" if self.prefix else ""
        start = base + validate_tenant(tenant) + STORED_SEP
        objects: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        ):
            objects.update({item["Key"]: item.get("Size", 0) for item in page.get("Contents", [])})
        found = {}
        for key in objects:
            stored = key[len(base) :].removesuffix("/" + POINTER)
            if not key.endswith("/" + POINTER) or not is_name(stored):
                continue
            name = AdapterId.from_stored(stored).qualified
            version = self._pointer(name)
            if version is not None:
                found[name] = sum(
                    objects.get(self._key(f"{stored}.{version}", f), 0) for f in FILES
                )
        return found

    def exists(self, name: str) -> bool:
        return self._pointer(name) is not None

    def fetch(self, name: str) -> Path:
        for attempt in range(3):
            version = self._pointer(name)
            if version is None:
                raise AdapterNotFoundError(name)
            stored = stored_name(name)
            target = self.cache_dir / f"{stored}.{version}"
            try:
                if not is_complete(target):
                    self._download(name, version, target)
            except ClientError as exc:
                if not _missing(exc) or attempt == 2:
                    raise
                continue  # replaced or deleted meanwhile
            for entry in self.cache_dir.glob(f"{stored}.*"):  # older versions of this name
                if entry != target and _VERSION.fullmatch(entry.name[len(stored) + 1 :]):
                    remove(entry)
            return target
        raise AdapterNotFoundError(name)

    def _download(self, name: str, version: str, target: Path) -> None:
        stored = stored_name(name)
        tmp = work_dir(self.cache_dir, TMP, stored)
        tmp.mkdir()
        try:
            for f in (*FILES, METADATA_FILE):
                self.client.download_file(
                    self.bucket, self._key(f"{stored}.{version}", f), str(tmp / f)
                )
            if _version({f: sha256(tmp / f) for f in (*FILES, METADATA_FILE)}) != version:
                raise AdapterValidationError(f"adapter {name!r}: store content does not match")
            os.replace(tmp, target)
        except OSError:
            if not is_complete(target):  # unless a concurrent fetch finished first
                raise
        finally:
            remove(tmp)

    def unchanged(self, name: str, metadata: dict) -> bool:
        """Always: a version's objects are never rewritten (new content is a new version), and
        ``fetch`` returns a cached folder only after every file's sha256 matched the version
        at download."""
        return True

    def metadata(self, name: str) -> dict:
        version = self._pointer(name)
        if version is None:
            raise AdapterNotFoundError(name)
        body = self._get(self._key(f"{stored_name(name)}.{version}", METADATA_FILE))
        return json.loads(body) if body else {}

    def put(self, name: str, folder: Path, metadata: dict) -> None:
        stored = stored_name(name)
        folder = Path(folder)
        meta = json.dumps(full_metadata(folder, metadata), indent=1).encode()
        hashes = {f: sha256(folder / f) for f in FILES}
        version = _version({**hashes, METADATA_FILE: hashlib.sha256(meta).hexdigest()})
        for f in FILES:
            self.client.upload_file(
                str(folder / f), self.bucket, self._key(f"{stored}.{version}", f)
            )
        key = self._key(f"{stored}.{version}", METADATA_FILE)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=meta)
        with self._lock:
            old = self._pointer(name)
            body = json.dumps({"version": version}).encode()
            self.client.put_object(Bucket=self.bucket, Key=self._key(stored, POINTER), Body=body)
        if old is not None and old != version:
            self._delete_version(name, old)

    def _delete_version(self, name: str, version: str) -> None:
        stored = stored_name(name)
        keys = [{"Key": self._key(f"{stored}.{version}", f)} for f in (*FILES, METADATA_FILE)]
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def delete(self, name: str) -> None:
        """The pointer goes first (the name disappears at once), then the version's objects."""
        with self._lock:
            version = self._pointer(name)
            if version is None:
                raise AdapterNotFoundError(name)
            self.client.delete_object(Bucket=self.bucket, Key=self._key(stored_name(name), POINTER))
        self._delete_version(name, version)
