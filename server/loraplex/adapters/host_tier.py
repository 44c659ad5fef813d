"""The host tier: adapter weights in host memory (an LRU of ``--max-cpu-loras``; an entry a
request holds is never evicted) and the loader threads that fill it from the store, off the
engine's critical path: a request whose adapter is not in host memory waits in the queue while
the running batch keeps stepping (``AdapterRegistry`` joins it with the catalog).

A replaced version that a request holds keeps its weights in host memory until that request
ends: a replace reads it back from the store first if host memory had evicted it, before the
store takes the new version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from loraplex import metrics
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterError, AdapterNotFoundError
from loraplex.adapters.folder_check import CheckedFolder
from loraplex.adapters.host_cache import HostCache
from loraplex.adapters.store import AdapterStore
from loraplex.adapters.weights import LoRAAdapter, build_adapter, pinned

log = logging.getLogger(__name__)


class HostTier:
    """Loads into host memory (``host``) on a pool of two threads; ``on_loaded`` wakes the
    engine when a load ends; ``pin_memory`` (a CUDA engine) keeps the weights page-locked.
    A part of :class:`~loraplex.adapters.registry.AdapterRegistry`, which makes the state."""

    store: AdapterStore
    dtype: torch.dtype
    pin_memory: bool
    check_folder: Callable[..., CheckedFolder]
    on_loaded: Callable[[], None]
    host: HostCache[LoRAAdapter]
    _by_key: dict[str, AdapterCard]
    _failed: dict[str, Exception]
    _loading: set[str]
    _lock: threading.RLock
    _pool: ThreadPoolExecutor
    _retire: Callable[[str], None]  # the registry's: forget a version nothing needs any more

    def loaded(self, key: str) -> LoRAAdapter | None:
        return self.host.get(key)

    def failure(self, key: str) -> Exception | None:
        with self._lock:
            return self._failed.get(key)

    def prefetch(self, key: str) -> None:
        """Start loading ``key`` into host memory unless it is there or on its way."""
        with self._lock:
            if key in self._loading or key in self._failed or key in self.host:
                return
            card = self._by_key.get(key)
            if card is None:
                self._failed[key] = AdapterNotFoundError(key.split("@")[0])
                return
            self._loading.add(key)
        self._pool.submit(self._load, card)

    def load(self, card: AdapterCard) -> LoRAAdapter:
        """Read ``card``'s version from the store (checked as at registration) into memory.

        A read that finds another version, or the store midway through swapping one in, is
        answered from host memory when a replace kept this version there for its holders
        (it does so before the store changes)."""
        start = time.perf_counter()
        try:
            checked = self.check_folder(self.store.fetch(card.name))
            if checked.version != card.version:  # replaced since the card was taken
                raise AdapterNotFoundError(f"{card.name} (version {card.version[:16]})")
        except (AdapterError, OSError):
            kept = self.host.get(card.key)
            if kept is not None:
                return kept
            raise
        adapter = build_adapter(card.name, checked, self.dtype)
        metrics.record_adapter_load("host", time.perf_counter() - start)
        return adapter

    def _load(self, card: AdapterCard) -> None:
        try:
            self.keep(card.key, self.load(card))
        except Exception as exc:  # reported to the requests that wait for it
            log.warning("loading adapter %s failed: %s", card.key, exc)
            with self._lock:
                self._failed[card.key] = exc
        finally:
            with self._lock:
                self._loading.discard(card.key)
            self._retire(card.key)  # replaced or removed while loading, and no longer held
            self.on_loaded()

    def add_ephemeral(self, adapter: LoRAAdapter) -> None:
        """A derived adapter (a per-request combination): host memory only, never stored."""
        self.keep(adapter.key, adapter)

    def keep(self, key: str, adapter: LoRAAdapter) -> None:
        """Put ``adapter`` in host memory, in pinned memory with ``pin_memory`` (a GPU copies
        from there into a slot without the host waiting); pinned here, on the caller's thread,
        so the engine thread never pays for it."""
        self.host.put(key, pinned(adapter) if self.pin_memory else adapter)

    def _needs_reload(self, key: str) -> bool:
        """Whether a request holds ``key`` while host memory has not got its weights."""
        return self.host.held(key) and key not in self.host

    def _keep_for_holders(self, card: AdapterCard) -> None:
        """Read ``card``'s version back into host memory for the requests that hold it (the
        store still has it; they keep it there until they end). A failed read is left to
        their own load, which reports it."""
        try:
            adapter = self.load(card)
        except Exception as exc:
            log.warning("reading replaced adapter %s back failed: %s", card.key, exc)
            return
        with self._lock:
            if self.host.held(card.key):  # else its last holder ended meanwhile
                self.keep(card.key, adapter)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
