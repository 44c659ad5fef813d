"""Durable adapter stores: a local folder or an S3 prefix, one adapter per name.

Each adapter is ``adapter_config.json`` + ``adapter_model.safetensors`` + ``loraplex.json`` (the
store's metadata: sha256, created, description ...). Writers make a new version invisible until it
is complete and then publish it with one atomic step, so a reader or a crash never sees half an
adapter. Every method validates the name first: no name can form a path or key outside the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.lora.validation import validate_name

try:
    from botocore.exceptions import ClientError
except ImportError:  # boto3 is optional: only S3 stores need it

    class ClientError(Exception):  # type: ignore[no-redef]
        response: dict = {}  # noqa: RUF012


METADATA_FILE = "loraplex.json"
FILES = (CONFIG_FILE, WEIGHTS_FILE)
POINTER = "current.json"
_TMP, _OLD, _DEL = ".tmp-", ".old-", ".del-"  # work folders; names cannot start with "."
_VERSION = re.compile(r"[0-9a-f]{64}")


class AdapterStore(Protocol):
    def names(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def fetch(self, name: str) -> Path: ...
    def put(self, name: str, folder: Path, metadata: dict) -> None: ...
    def metadata(self, name: str) -> dict: ...
    def delete(self, name: str) -> None: ...


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in FILES)


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
    except AdapterValidationError:
        return False
    return True


def full_metadata(folder: Path, metadata: dict) -> dict:
    """``metadata`` plus ``sha256`` (of the weights) and ``created`` (epoch s) unless given."""
    for f in FILES:
        if not (folder / f).is_file():
            raise AdapterValidationError(f"{f} is missing")
    meta = dict(metadata)
    meta.setdefault("sha256", _sha256(folder / WEIGHTS_FILE))
    meta.setdefault("created", int(time.time()))
    return meta


def _write_synced(path: Path, data: bytes | Path) -> None:
    """Write bytes (or copy a file) to ``path`` and fsync it."""
    with path.open("xb") as out:
        if isinstance(data, Path):
            with data.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _work_dir(parent: Path, kind: str, name: str) -> Path:
    return parent / f"{kind}{secrets.token_hex(8)}-{name}"


class LocalAdapterStore:
    """``root/<name>/`` per adapter. ``put`` writes ``root/.tmp-*``, fsyncs, then renames.

    Replacing moves the old folder aside (``.old-*``), renames the new one in and deletes the
    old one; if the rename fails the old folder goes back. At start, leftovers of a crash are
    repaired: ``.tmp-*`` and ``.del-*`` are deleted, an ``.old-*`` whose name is missing is
    restored. One process writes a given root.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        for entry in self.root.iterdir():
            if entry.name.startswith((_TMP, _DEL)):
                _remove(entry)
            elif entry.name.startswith(_OLD):
                name = entry.name[len(_OLD) + 17 :]
                if _is_name(name) and not os.path.lexists(self.root / name):
                    os.replace(entry, self.root / name)
                else:
                    _remove(entry)

    def names(self) -> list[str]:
        return sorted(e.name for e in self.root.iterdir() if _is_name(e.name) and _complete(e))

    def exists(self, name: str) -> bool:
        return _complete(self.root / validate_name(name))

    def fetch(self, name: str) -> Path:
        folder = self.root / validate_name(name)
        if not _complete(folder):
            raise AdapterNotFoundError(name)
        return folder

    def metadata(self, name: str) -> dict:
        path = self.fetch(name) / METADATA_FILE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # placed by hand, or unreadable
            return {}

    def put(self, name: str, folder: Path, metadata: dict) -> None:
        validate_name(name)
        folder = Path(folder)
        meta = full_metadata(folder, metadata)
        tmp = _work_dir(self.root, _TMP, name)
        tmp.mkdir()
        try:
            for f in FILES:
                _write_synced(tmp / f, folder / f)
            _write_synced(tmp / METADATA_FILE, json.dumps(meta, indent=1).encode())
            _fsync_dir(tmp)
            with self._lock:
                self._swap_in(tmp, self.root / name)
        except BaseException:
            _remove(tmp)
            raise

    def _swap_in(self, new: Path, target: Path) -> None:
        old = None
        if os.path.lexists(target):
            old = _work_dir(self.root, _OLD, target.name)
            os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        _fsync_dir(self.root)
        if old is not None:
            _remove(old)

    def delete(self, name: str) -> None:
        """The name disappears with one rename; the files are deleted afterwards."""
        with self._lock:
            folder = self.fetch(name)
            trash = _work_dir(self.root, _DEL, name)
            os.replace(folder, trash)
            _fsync_dir(self.root)
        _remove(trash)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _version(files: dict[str, str]) -> str:
    """A version id from the sha256 of every file: new content -> new objects, never overwrites."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


class S3AdapterStore:
    """``s3://bucket/prefix``: files under ``<prefix>/<name>.<version>/``, published by writing
    ``<prefix>/<name>/current.json`` (``{"version": ...}``) last, so readers only ever see
    complete versions. ``fetch`` downloads into ``cache_dir/<name>.<version>`` atomically.

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
        for entry in self.cache_dir.glob(_TMP + "*"):
            _remove(entry)
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
        body = self._get(self._key(validate_name(name), POINTER))
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
        base = self._key("") + "/" if self.prefix else ""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        ):
            for item in page.get("Contents", []):
                name = item["Key"][len(base) :].removesuffix("/" + POINTER)
                if item["Key"].endswith("/" + POINTER) and _is_name(name):
                    found.append(name)
        return sorted(found)

    def exists(self, name: str) -> bool:
        return self._pointer(name) is not None

    def fetch(self, name: str) -> Path:
        for attempt in range(3):
            version = self._pointer(name)
            if version is None:
                raise AdapterNotFoundError(name)
            target = self.cache_dir / f"{name}.{version}"
            try:
                if not _complete(target):
                    self._download(name, version, target)
            except ClientError as exc:
                if not _missing(exc) or attempt == 2:
                    raise
                continue  # replaced or deleted meanwhile
            for entry in self.cache_dir.glob(f"{name}.*"):  # older versions of this name
                if entry != target and _VERSION.fullmatch(entry.name[len(name) + 1 :]):
                    _remove(entry)
            return target
        raise AdapterNotFoundError(name)

    def _download(self, name: str, version: str, target: Path) -> None:
        tmp = _work_dir(self.cache_dir, _TMP, name)
        tmp.mkdir()
        try:
            for f in (*FILES, METADATA_FILE):
                self.client.download_file(
                    self.bucket, self._key(f"{name}.{version}", f), str(tmp / f)
                )
            if _version({f: _sha256(tmp / f) for f in (*FILES, METADATA_FILE)}) != version:
                raise AdapterValidationError(f"adapter {name!r}: store content does not match")
            os.replace(tmp, target)
        except OSError:
            if not _complete(target):  # unless a concurrent fetch finished first
                raise
        finally:
            _remove(tmp)

    def metadata(self, name: str) -> dict:
        version = self._pointer(name)
        if version is None:
            raise AdapterNotFoundError(name)
        body = self._get(self._key(f"{name}.{version}", METADATA_FILE))
        return json.loads(body) if body else {}

    def put(self, name: str, folder: Path, metadata: dict) -> None:
        validate_name(name)
        folder = Path(folder)
        meta = json.dumps(full_metadata(folder, metadata), indent=1).encode()
        hashes = {f: _sha256(folder / f) for f in FILES}
        version = _version({**hashes, METADATA_FILE: hashlib.sha256(meta).hexdigest()})
        for f in FILES:
            self.client.upload_file(str(folder / f), self.bucket, self._key(f"{name}.{version}", f))
        key = self._key(f"{name}.{version}", METADATA_FILE)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=meta)
        with self._lock:
            old = self._pointer(name)
            body = json.dumps({"version": version}).encode()
            self.client.put_object(Bucket=self.bucket, Key=self._key(name, POINTER), Body=body)
        if old is not None and old != version:
            self._delete_version(name, old)

    def _delete_version(self, name: str, version: str) -> None:
        keys = [{"Key": self._key(f"{name}.{version}", f)} for f in (*FILES, METADATA_FILE)]
        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def delete(self, name: str) -> None:
        """The pointer goes first (the name disappears at once), then the version's objects."""
        with self._lock:
            version = self._pointer(name)
            if version is None:
                raise AdapterNotFoundError(name)
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name, POINTER))
        self._delete_version(name, version)


def open_store(url_or_path: str, cache_dir: Path) -> AdapterStore:
    """``s3://bucket/prefix`` -> :class:`S3AdapterStore` (downloads cached in ``cache_dir``);
    anything else is a local folder."""
    if url_or_path.startswith("s3://"):
        return S3AdapterStore(url_or_path, cache_dir)
    return LocalAdapterStore(url_or_path)
