"""The adapter catalog over three tiers: store (durable) -> host memory (LRU) -> device slots.

The registry owns the first two; the engine's slot cache owns the third. Loading from the store
runs on a small thread pool, off the engine's critical path: a request whose adapter is not in
host memory waits in the queue (``is_loaded``) while the running batch keeps stepping.

Registering reads the weights file once: the folder check returns the tensors it checked and
their hash, and the adapter is built from those. A replaced or removed version stays known
(``_by_key``) only while a request still holds it; its last release retires it.
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
from loraplex.adapters.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterRefusedError,
)
from loraplex.adapters.folder_check import CheckedFolder
from loraplex.adapters.host_cache import HostCache
from loraplex.adapters.rules import WEIGHTS_FILE
from loraplex.adapters.store import AdapterStore
from loraplex.adapters.tenancy import AdapterId
from loraplex.adapters.weights import LoRAAdapter, build_adapter, pinned

log = logging.getLogger(__name__)


def describe(name: str, folder: Path, checked: CheckedFolder, metadata: dict) -> AdapterCard:
    """A card from the checked adapter (config, weights hash) and the store's metadata; the
    version is the hash of the bytes checked, which are the bytes a load of it will find."""
    weights = folder / WEIGHTS_FILE
    return AdapterCard(
        name=name,
        version=checked.weights.version,
        config=checked.config,
        size_bytes=weights.stat().st_size,
        created=int(metadata.get("created") or weights.stat().st_mtime),
        description=metadata.get("description"),
        pinned=bool(metadata.get("pinned", False)),
    )


class AdapterRegistry:
    """(owner, name) -> current :class:`AdapterCard`; key -> :class:`LoRAAdapter` in host memory.

    Names are qualified (``name`` public, ``tenant/name`` a tenant's own): who may see which is
    the API's business (``api/auth.py``); here two tenants' ``support`` are simply two entries.
    The owner is written into the store's metadata too and checked at ``scan``.

    ``check_folder`` validates an adapter's files (config rules, safetensors header, shapes
    against the base model's LoRA layers) and returns what it read, so they are not read again.
    Every folder is checked the same way: before it reaches the store, at start-up, and on each
    read back from the store. ``on_loaded`` wakes the engine when a load finishes.
    ``pin_memory`` (a CUDA engine): host-memory weights are kept page-locked.
    """

    def __init__(
        self,
        store: AdapterStore,
        dtype: torch.dtype,
        check_folder: Callable[[Path], CheckedFolder],
        max_cpu_loras: int,
        on_loaded: Callable[[], None] = lambda: None,
        pin_memory: bool = False,
    ) -> None:
        self.store = store
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

    # ---- catalog -----------------------------------------------------------------------

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
        """The card of stored adapter ``name``, checked as at upload (AdapterError if not)."""
        folder = self.store.fetch(name)
        checked = self.check_folder(folder)
        metadata = self.store.metadata(name)
        owner = metadata.get("owner")  # none in a folder placed by hand: public
        if owner != AdapterId.parse(name).owner:
            raise AdapterError(f"its metadata names owner {owner!r}")
        return describe(name, folder, checked, metadata)

    def refuse(self, name: str, reason: str) -> None:
        """Record that ``name`` could not be taken at start, and why (it stays unservable until
        an adapter of that name is registered)."""
        log.warning("adapter %s refused: %s", name, reason)
        with self._lock:
            self._refused[name] = reason

    def refused(self) -> dict[str, str]:
        """name -> reason, for every adapter refused at start and not registered since."""
        with self._lock:
            return dict(sorted(self._refused.items()))

    def refusal(self, name: str) -> AdapterRefusedError | None:
        with self._lock:
            reason = self._refused.get(name)
        return None if reason is None else AdapterRefusedError(name, reason)

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
        ident = AdapterId.parse(name)
        name = ident.qualified
        checked = self.check_folder(folder)
        adapter = build_adapter(name, checked, self.dtype)
        metadata = {
            "owner": ident.owner,
            "public": ident.public,
            "sha256": adapter.version,
            "created": int(time.time()),
            "description": description,
            "pinned": pinned,
        }
        with self._write_lock:
            with self._lock:
                old = self._cards.get(ident)
            if old is not None and not replace:
                raise AdapterExistsError(f"adapter {name!r} exists; pass replace=true")
            self.store.put(name, folder, metadata)
            card = describe(name, folder, checked, metadata)
            self.keep(card.key, adapter)  # just validated: warm it
            self._publish(card)
        if old is not None and old.key != card.key:
            self._retire(old.key)  # as in remove(): requests using it keep it until done
        return card

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

    def _publish(self, card: AdapterCard) -> None:
        with self._lock:
            self._refused.pop(card.name, None)
            self._cards[card.id] = card
            self._by_key[card.key] = card
            self._failed.pop(card.key, None)

    def get(self, name: str) -> AdapterCard:
        """The card of a qualified name; an invalid name is as unknown as a missing one."""
        card = self._find(name)
        if card is None:
            raise self.refusal(name) or AdapterNotFoundError(name)
        return card

    def has(self, name: str) -> bool:
        return self._find(name) is not None

    def _find(self, name: str) -> AdapterCard | None:
        try:
            ident = AdapterId.parse(name)
        except AdapterError:
            return None
        with self._lock:
            return self._cards.get(ident)

    def names(self) -> list[str]:
        """Qualified names, sorted."""
        with self._lock:
            return sorted(card.name for card in self._cards.values())

    def cards(self) -> list[AdapterCard]:
        with self._lock:
            return sorted(self._cards.values(), key=lambda card: card.name)

    # ---- host tier ---------------------------------------------------------------------

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
        """Read ``card``'s version from the store (checked as at registration) into memory."""
        start = time.perf_counter()
        checked = self.check_folder(self.store.fetch(card.name))
        if checked.weights.version != card.version:  # replaced since the card was taken
            raise AdapterNotFoundError(f"{card.name} (version {card.version[:16]})")
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

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
