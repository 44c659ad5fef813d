"""Registered adapters by name, held in host memory, keyed by identity (``name@sha``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from loraplex.lora.adapter import CONFIG_FILE, LoRAAdapter, load_adapter
from loraplex.lora.errors import AdapterError, AdapterNotFoundError

log = logging.getLogger(__name__)


class AdapterRegistry:
    """name -> current :class:`LoRAAdapter`; ``key`` -> adapter for every version still in use.

    ``validate`` checks an adapter against the served model before it becomes visible. Reads
    come from the API thread and writes from either side, so a lock guards the two maps.
    """

    def __init__(self, dtype: torch.dtype, validate: Callable[[LoRAAdapter], None]) -> None:
        self.dtype = dtype
        self.validate = validate
        self._by_name: dict[str, LoRAAdapter] = {}
        self._by_key: dict[str, LoRAAdapter] = {}
        self._lock = threading.Lock()

    def add(self, name: str, folder: str | Path) -> LoRAAdapter:
        adapter = load_adapter(name, folder, self.dtype)
        self.validate(adapter)
        with self._lock:
            self._by_name[name] = adapter
            self._by_key[adapter.key] = adapter
        return adapter

    def load_dir(self, folder: str | Path) -> list[str]:
        """Register every adapter folder under ``folder``; a broken one is logged and skipped."""
        loaded = []
        for sub in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
            if not (sub / CONFIG_FILE).is_file():
                continue
            try:
                self.add(sub.name, sub)
                loaded.append(sub.name)
            except AdapterError as exc:
                log.warning("skipping adapter %s: %s", sub, exc)
        return loaded

    def get(self, name: str) -> LoRAAdapter:
        with self._lock:
            adapter = self._by_name.get(name)
        if adapter is None:
            raise AdapterNotFoundError(name)
        return adapter

    def by_key(self, key: str) -> LoRAAdapter:
        with self._lock:
            return self._by_key[key]

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._by_name

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)
