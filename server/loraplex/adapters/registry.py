"""The adapter registry: the catalog of versions (``catalog.py``) and the host tier
(``host_tier.py``) over one store, joined here, where they meet: scanning and refreshing the
store, registering and removing adapters, and retiring a version once nothing needs it.

Three tiers: store (durable) -> host memory (LRU) -> device slots; the registry owns the first
two, the engine's slot cache the third. Registering reads the weights file once: the folder
check returns the tensors it checked and their hash, and the adapter is built from those.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from loraplex import metrics
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.catalog import AdapterCatalog
from loraplex.adapters.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
)
from loraplex.adapters.folder_check import VALUE_CHECKS, CheckedFolder
from loraplex.adapters.host_cache import HostCache
from loraplex.adapters.host_tier import HostTier
from loraplex.adapters.quota import TenantQuota
from loraplex.adapters.store import AdapterStore
from loraplex.adapters.stored import describe, read_stored
from loraplex.adapters.tenancy import AdapterId
from loraplex.adapters.weights import LoRAAdapter, build_adapter

log = logging.getLogger(__name__)


class AdapterRegistry(AdapterCatalog, HostTier):
    """(owner, name) -> current :class:`AdapterCard` (:class:`AdapterCatalog`); key ->
    :class:`LoRAAdapter` in host memory (:class:`HostTier`); one lock over both. The owner of
    a qualified name is written into the store's metadata too and checked at ``scan``.

    ``check_folder`` validates an adapter's files (config rules, safetensors header, shapes
    against the base model's LoRA layers) and returns what it read, so they are not read again.
    Every folder is checked the same way before it reaches the store and on each read back from
    the store into memory; at start-up (``scan``, ``refresh``) a stored adapter whose weights the
    store vouches are unchanged since their values were checked (``trusted_version``) is checked
    by its config and header only: its hash, recorded at upload, is its identity.
    ``quota``: per-tenant storage limits, counted from the store at each upload.
    ``on_loaded`` wakes the engine when a load finishes.
    ``pin_memory`` (a CUDA engine): host-memory weights are kept page-locked.
    """

    def __init__(
        self,
        store: AdapterStore,
        dtype: torch.dtype,
        check_folder: Callable[..., CheckedFolder],
        max_cpu_loras: int,
        on_loaded: Callable[[], None] = lambda: None,
        pin_memory: bool = False,
        quota: TenantQuota | None = None,
    ) -> None:
        self.store = store
        self.quota = quota or TenantQuota()
        self.dtype = dtype
        self.pin_memory = pin_memory
        self.check_folder = check_folder
        self.on_loaded = on_loaded
        self.host: HostCache[LoRAAdapter] = HostCache(
            max_cpu_loras,
            on_unused=self._retire,
            on_evict=lambda keys: metrics.record_adapter_evictions("host", len(keys)),
        )
        self._cards: dict[AdapterId, AdapterCard] = {}
        self._by_key: dict[str, AdapterCard] = {}  # current versions + older ones still held
        self._failed: dict[str, Exception] = {}
        self._refused: dict[str, str] = {}  # name -> why it was not taken at start
        self._listing: dict[str, str] = {}  # the store's listing when last read (refresh)
        self._loading: set[str] = set()
        self._lock = threading.RLock()  # the maps; held briefly, the engine thread takes it
        # Serializes store writes (register, remove), which may be slow uploads; the engine
        # thread never takes it, so it never waits for one.
        self._write_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="loraplex-adapter-load")

    def scan(self) -> list[str]:
        """Register every adapter already in the store; a broken one is refused (listed with
        its reason, and named in the error of a request for it), not dropped."""
        self._listing = self.store.listing()
        for name in sorted(self._listing):
            try:
                self._publish(self._read(name))
            except AdapterError as exc:
                self.refuse(name, f"{exc}; fix or replace it in the adapter store")
        return self.names()

    def _read(self, name: str) -> AdapterCard:
        return read_stored(self.store, name, self.check_folder)

    def refresh(self) -> list[AdapterCard]:
        """Adopt what other processes sharing the store wrote since the last look: a new or
        replaced adapter is published (its changed token in ``store.listing()``), a deleted one
        is dropped; requests holding a dropped version finish on it. Returns the cards that
        stopped being current, whose device copies the engine should drop.

        Runs under the write lock, so no upload or delete through this process interleaves
        with it: every name it holds a card for is then in the store, unless deleted elsewhere.
        Only changed names are read (a replaced adapter's weights are checked as at upload).
        """
        retired: list[AdapterCard] = []
        try:
            with self._write_lock:
                listing = self.store.listing()
                listed = {AdapterId.parse(name) for name in listing}
                with self._lock:
                    gone = [self._cards.pop(i) for i in sorted(set(self._cards) - listed, key=str)]
                retired += gone
                for name, token in sorted(listing.items()):
                    if self._listing.get(name) == token:
                        continue
                    try:
                        card = self._read(name)
                    except AdapterError as exc:
                        log.warning("skipping adapter %s: %s", name, exc)
                        continue
                    with self._lock:
                        old = self._cards.get(AdapterId.parse(name))
                    if old is not None and old.key == card.key:
                        continue
                    self._publish(card)
                    if old is not None:
                        retired.append(old)
                self._listing = listing
        finally:  # what was dropped before a store error is still retired
            for card in retired:
                log.info(
                    "adapter %s %s in the store",
                    card.name,
                    "replaced" if self.has(card.name) else "deleted",
                )
                self._retire(card.key)
        return retired

    def register(
        self,
        name: str,
        folder: Path,
        *,
        replace: bool = False,
        description: str | None = None,
        pinned: bool = False,
    ) -> AdapterCard:
        """Validate ``folder`` and store it atomically under the qualified ``name``; then it is
        servable. Its owner (None: public) goes into the store's metadata with it."""
        card, _ = self.register_version(
            name, folder, replace=replace, description=description, pinned=pinned
        )
        return card

    def register_version(
        self,
        name: str,
        folder: Path,
        *,
        replace: bool = False,
        description: str | None = None,
        pinned: bool = False,
    ) -> tuple[AdapterCard, AdapterCard | None]:
        """:meth:`register`, returning the new card and the card it replaced (None if new).

        The order keeps every version a request can hold readable: the new card is published
        while its weights are held in host memory (requests resolve it from then on), then a
        replaced version that requests hold is read back into host memory if it had left it
        (the store still has it), and only then does the store take the new version. A store
        that fails puts the old card back; requests that resolved the new one finish on it.
        """
        ident = AdapterId.parse(name)
        name = ident.qualified
        self.quota.enforce(self.store, ident, folder)  # before the weights are read: cheap
        checked = self.check_folder(folder)
        adapter = build_adapter(name, checked, self.dtype)
        metadata = {
            "owner": ident.owner,
            "public": ident.public,
            "sha256": adapter.version,
            "values_checked": VALUE_CHECKS,  # these bytes passed the value checks (start-up)
            "created": int(time.time()),
            "description": description,
            "pinned": pinned,
        }
        with self._write_lock:
            with self._lock:
                old = self._cards.get(ident)
            if old is not None and not replace:
                raise AdapterExistsError(f"adapter {name!r} exists; pass replace=true")
            self.quota.enforce(self.store, ident, folder)  # again: no upload of ours in between
            card = describe(name, folder, checked, metadata)
            replaced = old if old is not None and old.key != card.key else None
            self.host.acquire(card.key)  # the store has no copy yet: never evicted till it has
            try:
                self.keep(card.key, adapter)  # just validated: warm it
                with self._lock:
                    self._publish(card)
                    # No request can take the old version from here on: only those that hold
                    # it now need it, and the store is about to lose it.
                    stale = replaced if replaced and self._needs_reload(replaced.key) else None
                if stale is not None:
                    self._keep_for_holders(stale)
                try:
                    self.store.put(name, folder, metadata)
                except BaseException:
                    with self._lock:  # back to the version the store still has
                        if old is not None:
                            self._cards[ident] = old
                        else:
                            self._cards.pop(ident, None)
                    raise
            finally:
                self.host.release(card.key)  # a rolled-back card is retired here once unheld
        if replaced is not None:
            self._retire(replaced.key)  # as in remove(): requests using it keep it until done
        return card, replaced

    def remove(self, name: str) -> AdapterCard:
        """New requests get 404 at once; running ones keep the weights they hold."""
        with self._write_lock:
            with self._lock:
                card = self._cards.pop(AdapterId.parse(name), None)
            if card is None:
                raise AdapterNotFoundError(name)
            self.store.delete(name)
        self._retire(card.key)
        return card

    def _retire(self, key: str) -> None:
        """Forget ``key`` once nothing can need it: not the current version of its name, no
        request holds it (``HostCache.on_unused`` calls this on the last release) and no load of
        it is under way (its end calls this again). Then its card, any recorded load failure and
        its weights in host memory go; a combination's weights stay cached (never carded).
        """
        with self._lock:
            card = self._by_key.get(key)
            current = self._cards.get(card.id) if card is not None else None
            if current is not None and current.key == key:
                return
            if key in self._loading or self.host.held(key):
                return
            self._failed.pop(key, None)
            if self._by_key.pop(key, None) is None:
                return
        self.host.discard(key)
