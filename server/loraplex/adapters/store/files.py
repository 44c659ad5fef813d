"""What both stores share: the files of one stored adapter and crash-safe file helpers.

Work folders are named ``<kind><random>-<name>``; adapter names cannot start with ".", so a work
folder is never taken for an adapter.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.adapters.tenancy import is_stored_name

METADATA_FILE = "loraplex.json"
FILES = (CONFIG_FILE, WEIGHTS_FILE)
TMP, OLD, DEL = ".tmp-", ".old-", ".del-"  # work folders: being written, replaced, deleted


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in FILES)


def is_name(entry: str) -> bool:
    """Whether a folder or prefix is an adapter's stored name (``name`` or ``tenant@name``)."""
    return is_stored_name(entry)


def full_metadata(folder: Path, metadata: dict) -> dict:
    """``metadata`` plus ``sha256`` (of the weights) and ``created`` (epoch s) unless given."""
    for f in FILES:
        if not (folder / f).is_file():
            raise AdapterValidationError(f"{f} is missing")
    meta = dict(metadata)
    if "sha256" not in meta:  # the registry passes the hash it took: do not read the file again
        meta["sha256"] = sha256(folder / WEIGHTS_FILE)
    meta.setdefault("created", int(time.time()))
    return meta


def write_synced(path: Path, data: bytes | Path) -> None:
    """Write bytes (or copy a file) to ``path`` and fsync it."""
    with path.open("xb") as out:
        if isinstance(data, Path):
            with data.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def work_dir(parent: Path, kind: str, name: str) -> Path:
    return parent / f"{kind}{secrets.token_hex(8)}-{name}"
