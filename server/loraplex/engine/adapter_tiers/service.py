"""The adapter management the API calls: list, inspect, upload, load, delete, merge, pin.

Validation and store I/O run in worker threads (an upload may take seconds); whatever touches
device slots or base weights runs on the engine thread between two steps, through
``on_engine``, because the engine thread owns them.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from loraplex.adapters.archive import extract_archive
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterError, AdapterRefusedError
from loraplex.adapters.roots import copy_from_root
from loraplex.adapters.rules import Limits
from loraplex.engine.adapter_tiers.tiers import AdapterTiers

T = TypeVar("T")
log = logging.getLogger(__name__)
STAGING_PREFIX = "loraplex-load-"  # copies of --adapter-roots folders, in the system temp dir
OnEngine = Callable[[Callable[[], T]], Awaitable[T]]


class AdapterService:
    """The API's one door to adapters (``AsyncEngine.adapters``). Every name is qualified
    (``name`` public, ``tenant/name`` a tenant's): the API resolves what a caller may see
    (``api/auth.py``) before it calls here."""

    def __init__(self, adapters: AdapterTiers, on_engine: OnEngine) -> None:
        self._adapters = adapters
        self._registry = adapters.registry
        self._on_engine = on_engine
        self._merging: dict[str, asyncio.Task[AdapterCard]] = {}  # key -> merge under way

    @property
    def limits(self) -> Limits:
        """The limits adapters are validated with; uploads are capped by the same values."""
        return self._adapters.limits

    def names(self) -> list[str]:
        return self._registry.names()

    def has(self, name: str) -> bool:
        return self._registry.has(name)

    def find(self, name: str) -> AdapterCard | AdapterRefusedError | None:
        """What a qualified name is, in one lookup: its card (requests pass it on, so nothing
        looks the name up again), why it was refused at start, or None (unknown)."""
        try:
            return self._registry.get(name)
        except AdapterRefusedError as refused:
            return refused
        except AdapterError:
            return None

    def cards(self) -> list[AdapterCard]:
        return self._registry.cards()

    def refused(self) -> dict[str, str]:
        """Qualified name -> why it could not be taken at start (rank, base model, a bad file);
        every tenant's: the API shows each caller only its own and the public ones."""
        return self._registry.refused()

    def refusal(self, name: str, shown: str | None = None) -> AdapterRefusedError | None:
        """The error for qualified ``name`` if it was refused at start, else None; its message
        names the adapter ``shown`` (what the caller sent)."""
        return self._registry.refusal(name, shown)

    def known(self, name: str) -> bool:
        """Whether qualified ``name`` is servable or was refused at start (``Principal.resolve``
        finds refusals by the same namespace rules as adapters)."""
        return self._registry.known(name)

    def card(self, name: str) -> tuple[AdapterCard, dict[str, object]]:
        """The card and where the adapter is now (device slot, host memory, store)."""
        card = self._registry.get(name)
        return card, self._adapters.location(card)

    async def unpack(self, archive: Path, folder: Path) -> None:
        """Unpack an uploaded zip or tar.gz into the empty ``folder`` (checked member by member:
        no links, no ``..``, size caps; see ``adapters/archive.py``), off the event loop."""
        await asyncio.to_thread(extract_archive, archive, folder, self.limits)

    async def register(
        self,
        name: str,
        folder: Path,
        *,
        replace: bool = False,
        description: str | None = None,
        pinned: bool = False,
    ) -> AdapterCard:
        """Validate and store ``folder`` as ``name``. Replacing a resident adapter writes the
        new version into a device slot before this returns (``EngineAdapters.swap``: in place
        when no request holds the old one), so requests that arrive after it run on the new
        weights at once; requests that resolved the old version finish on it.

        A pin is reserved before anything is stored, so past ``--max-pinned-loras`` the upload
        is refused (409) and leaves no trace, however many pinned uploads arrive at once.
        """
        registry, adapters = self._registry, self._adapters
        if pinned:
            adapters.pins.reserve(name)
        try:
            card, old = await asyncio.to_thread(
                registry.register_version,
                name,
                folder,
                replace=replace,
                description=description,
                pinned=pinned,
            )

            def settle() -> None:
                if old is not None:
                    adapters.swap(old.key, card.key)
                if pinned:
                    adapters.pin(card)

            await self._on_engine(settle)
        finally:
            if pinned:
                adapters.pins.release(name)
        return card

    async def load_path(self, name: str, path: str, replace: bool = False) -> AdapterCard:
        """Register a server-side folder; it must lie under one of ``--adapter-roots`` and hold
        regular files only. They are copied into a private staging folder first (always
        removed), so what is validated and stored is what was checked."""
        folder = self._adapters.check_path(path)
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=STAGING_PREFIX))
        try:
            cap = self.limits.max_body_bytes
            copy = await asyncio.to_thread(copy_from_root, folder, staging, cap)
            return await self.register(name, copy, replace=replace)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)

    async def remove(self, name: str) -> AdapterCard:
        """New requests get 404 at once; running ones finish on the weights they hold."""
        card = await asyncio.to_thread(self._registry.remove, name)
        await self._on_engine(lambda: self._adapters.forget(card.key))
        return card

    async def merge(self, name: str) -> AdapterCard:
        """Serve ``name`` pre-merged: ``W0 + scale·B·A`` is computed on the merge worker thread
        while the engine keeps stepping, then swapped in between two steps. Past
        ``--max-merged-adapters`` a :class:`CapacityError` (409); concurrent merges of one
        adapter share one computation."""
        card = self._registry.get(name)
        task = self._merging.get(card.key)
        if task is None:
            if not self._adapters.merges.begin(card.key):
                return card  # merged already
            task = asyncio.ensure_future(self._merge(card))
            self._merging[card.key] = task
            task.add_done_callback(lambda done: self._merged(card.key, done))
        # Shielded: a client that hangs up does not cancel a merge halfway; its place under
        # the cap is given back when the merge ends, never while the worker still computes.
        return await asyncio.shield(task)

    async def _merge(self, card: AdapterCard) -> AdapterCard:
        adapters = self._adapters
        try:
            adapter = await asyncio.to_thread(adapters.load, card)
            weights = await asyncio.wrap_future(adapters.merges.compute(adapter))
        except BaseException:
            adapters.merges.cancel(card.key)
            raise
        await self._on_engine(lambda: adapters.install_merged(card, weights))
        return card

    def _merged(self, key: str, task: asyncio.Task[AdapterCard]) -> None:
        self._merging.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a client that left must not leave a warning behind

    async def watch_store(self, interval_s: float) -> None:
        """Every ``interval_s`` (``--store-poll-s``), adopt what other replicas sharing the store
        uploaded, replaced or deleted (``AdapterRegistry.refresh``); the versions that stopped
        being current leave the device tier as after a local replace. Runs until cancelled; a
        store that cannot be read is logged and tried again at the next tick."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                retired = await asyncio.to_thread(self._registry.refresh)
            except Exception:
                log.exception("reading the adapter store failed; trying again in %s s", interval_s)
                continue
            if retired:
                keys = [card.key for card in retired]
                await self._on_engine(lambda keys=keys: [self._adapters.forget(k) for k in keys])

    async def unmerge(self, name: str) -> AdapterCard:
        """New requests run dynamically at once; running ones finish on the merged copy."""
        return await self._on_engine(lambda: self._adapters.unmerge(name))
