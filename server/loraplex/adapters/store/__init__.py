"""Durable adapter stores: a local folder or an S3 prefix, one adapter per name.

Each adapter is ``adapter_config.json`` + ``adapter_model.safetensors`` + ``loraplex.json`` (the
store's metadata: sha256, created, description ...). Writers make a new version invisible until it
is complete and then publish it with one atomic step, so a reader or a crash never sees half an
adapter. Every method validates the name first: no name can form a path or key outside the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from loraplex.adapters.store.local import LocalAdapterStore

__all__ = ["AdapterStore", "LocalAdapterStore", "open_store"]


class AdapterStore(Protocol):
    def names(self) -> list[str]: ...
    def listing(self) -> dict[str, str]: ...  # name -> a token that changes with its content
    def sizes(self, tenant: str) -> dict[str, int]: ...  # a tenant's name -> bytes (quota)
    def exists(self, name: str) -> bool: ...
    def fetch(self, name: str) -> Path: ...
    def put(self, name: str, folder: Path, metadata: dict) -> None: ...
    def metadata(self, name: str) -> dict: ...
    def unchanged(self, name: str, metadata: dict) -> bool: ...  # weights as put, unread
    def delete(self, name: str) -> None: ...


def open_store(url_or_path: str, cache_dir: Path) -> AdapterStore:
    """``s3://bucket/prefix`` -> ``S3AdapterStore`` (downloads cached in ``cache_dir``);
    anything else is a local folder. The S3 module (and botocore) load only for an S3 store."""
    if url_or_path.startswith("s3://"):
        from loraplex.adapters.store.s3 import S3AdapterStore

        return S3AdapterStore(url_or_path, cache_dir)
    return LocalAdapterStore(url_or_path)
