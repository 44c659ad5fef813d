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
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from loraplex.lora.adapter import CONFIG_FILE, WEIGHTS_FILE
from loraplex.lora.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.lora.validation import validate_name

METADATA_FILE = "loraplex.json"
FILES = (CONFIG_FILE, WEIGHTS_FILE)
_TMP, _OLD, _DEL = ".tmp-", ".old-", ".del-"  # work folders; names cannot start with "."


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
    if "sha256" not in meta:  # the registry passes the hash it took: do not read the file again
        meta["sha256"] = _sha256(folder / WEIGHTS_FILE)
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


def open_store(url_or_path: str, cache_dir: Path) -> AdapterStore:
    """``s3://bucket/prefix`` -> :class:`S3AdapterStore` (downloads cached in ``cache_dir``);
    anything else is a local folder."""
    if url_or_path.startswith("s3://"):
        from loraplex.lora.s3_store import S3AdapterStore

        return S3AdapterStore(url_or_path, cache_dir)
    return LocalAdapterStore(url_or_path)


def __getattr__(name: str) -> Any:
    """``S3AdapterStore`` stays importable from here; it is loaded on first use (PEP 562)."""
    if name == "S3AdapterStore":
        from loraplex.lora.s3_store import S3AdapterStore

        return S3AdapterStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
