"""The local adapter store: one folder per adapter under a root, replaced by atomic renames."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from loraplex.adapters.errors import AdapterNotFoundError
from loraplex.adapters.rules import WEIGHTS_FILE
from loraplex.adapters.store.files import (
    DEL,
    FILES,
    METADATA_FILE,
    OLD,
    TMP,
    fsync_dir,
    full_metadata,
    is_complete,
    is_name,
    remove,
    work_dir,
    write_synced,
)
from loraplex.adapters.tenancy import STORED_SEP, AdapterId, stored_name, validate_tenant

__all__ = ["LocalAdapterStore"]


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:  # finished by its writer meanwhile
        return float("inf")


class LocalAdapterStore:
    """``root/<name>/`` per public adapter, ``root/<tenant>@<name>/`` per tenant's one; every
    method takes qualified names (``name``, ``tenant/name``). ``put`` writes ``root/.tmp-*``,
    fsyncs, then renames.

    Replacing moves the old folder aside (``.old-*``), renames the new one in and deletes the
    old one; if the rename fails the old folder goes back. At start, leftovers of a crash are
    repaired: ``.tmp-*`` and ``.del-*`` are deleted, an ``.old-*`` whose name is missing is
    restored. Several processes may share a root (replicas on one ReadWriteMany volume): a work
    folder younger than ``REPAIR_AFTER_S`` may be another process's write in flight, so the
    repair leaves it for a later start.
    """

    REPAIR_AFTER_S = 600.0

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        recent = time.time() - self.REPAIR_AFTER_S
        for entry in self.root.iterdir():
            if entry.name.startswith((TMP, DEL, OLD)) and _mtime(entry) > recent:
                continue  # perhaps another replica's upload, replace or delete under way
            if entry.name.startswith((TMP, DEL)):
                remove(entry)
            elif entry.name.startswith(OLD):
                name = entry.name[len(OLD) + 17 :]
                if is_name(name) and not os.path.lexists(self.root / name):
                    os.replace(entry, self.root / name)
                else:
                    remove(entry)

    def names(self) -> list[str]:
        """Qualified names (``name``, ``tenant/name``) of the complete adapters."""
        return sorted(
            AdapterId.from_stored(e.name).qualified
            for e in self.root.iterdir()
            if is_name(e.name) and is_complete(e)
        )

    def listing(self) -> dict[str, str]:
        """name -> a change token: the weights file's inode, size and mtime. A replace renames a
        new folder in (a new file), so the token changes; one ``stat`` per adapter."""
        tokens = {}
        for name in self.names():
            try:
                st = (self.root / stored_name(name) / WEIGHTS_FILE).stat()
            except FileNotFoundError:  # deleted since names() looked
                continue
            tokens[name] = f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
        return tokens

    def sizes(self, tenant: str) -> dict[str, int]:
        """Qualified name -> bytes of its config and weights files, for each adapter of
        ``tenant`` (one ``stat`` per file; what the tenant quota counts)."""
        prefix = validate_tenant(tenant) + STORED_SEP
        found = {}
        for entry in self.root.iterdir():
            if not (entry.name.startswith(prefix) and is_name(entry.name)):
                continue
            try:
                size = sum((entry / f).stat().st_size for f in FILES)
            except FileNotFoundError:  # incomplete, or deleted since iterdir() looked
                continue
            found[AdapterId.from_stored(entry.name).qualified] = size
        return found

    def exists(self, name: str) -> bool:
        return is_complete(self.root / stored_name(name))

    def fetch(self, name: str) -> Path:
        folder = self.root / stored_name(name)
        if not is_complete(folder):
            raise AdapterNotFoundError(name)
        return folder

    def unchanged(self, name: str, metadata: dict) -> bool:
        """Whether the weights file is still the one ``put`` wrote with ``metadata``, told
        without reading it: the size and nanosecond mtime recorded then (the folder's renames
        keep both; a rewrite, a copy without ``-p`` or a hand edit changes the mtime)."""
        record = metadata.get("weights_stat")
        if not isinstance(record, dict):
            return False  # placed by hand, or stored before records were kept
        try:
            st = (self.root / stored_name(name) / WEIGHTS_FILE).stat()
        except FileNotFoundError:
            return False
        return record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns

    def metadata(self, name: str) -> dict:
        path = self.fetch(name) / METADATA_FILE
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # placed by hand, or unreadable
            return {}

    def put(self, name: str, folder: Path, metadata: dict) -> None:
        stored = stored_name(name)
        folder = Path(folder)
        meta = full_metadata(folder, metadata)
        tmp = work_dir(self.root, TMP, stored)
        tmp.mkdir()
        try:
            for f in FILES:
                write_synced(tmp / f, folder / f)
            st = (tmp / WEIGHTS_FILE).stat()  # renames keep it: see unchanged()
            meta["weights_stat"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            write_synced(tmp / METADATA_FILE, json.dumps(meta, indent=1).encode())
            fsync_dir(tmp)
            with self._lock:
                self._swap_in(tmp, self.root / stored)
        except BaseException:
            remove(tmp)
            raise

    def _swap_in(self, new: Path, target: Path) -> None:
        old = None
        if os.path.lexists(target):
            old = work_dir(self.root, OLD, target.name)
            os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        fsync_dir(self.root)
        if old is not None:
            remove(old)

    def delete(self, name: str) -> None:
        """The name disappears with one rename; the files are deleted afterwards."""
        with self._lock:
            folder = self.fetch(name)
            trash = work_dir(self.root, DEL, folder.name)
            os.replace(folder, trash)
            fsync_dir(self.root)
        remove(trash)
