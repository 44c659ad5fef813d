"""The catalog of adapter versions: the current card of every qualified name, the versions a
request still holds, and the names refused at start (``AdapterRegistry`` joins it with the host
tier and the store).

A request holds its version from the moment it resolves the name (:meth:`AdapterCatalog.hold`,
under the same lock a replace publishes under), so a replace can never retire a version that a
request has resolved but not yet queued; a replaced or removed version stays known (``_by_key``)
only while a request holds it, and its last release retires it. Names are qualified (``name``
public, ``tenant/name`` a tenant's own): who may see which is the namespace rules' business
(``tenancy.py``); here two tenants' ``support`` are simply two entries.
"""

from __future__ import annotations

import logging
import threading

from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterError, AdapterNotFoundError, AdapterRefusedError
from loraplex.adapters.host_cache import HostCache
from loraplex.adapters.tenancy import AdapterId
from loraplex.adapters.weights import LoRAAdapter

log = logging.getLogger(__name__)


class AdapterCatalog:
    """Name -> current :class:`AdapterCard`, key -> every version still known, name -> why it
    was refused at start; a version's holds are references in the host cache (``host``).
    A part of :class:`~loraplex.adapters.registry.AdapterRegistry`, which makes the state."""

    host: HostCache[LoRAAdapter]
    _cards: dict[AdapterId, AdapterCard]
    _by_key: dict[str, AdapterCard]  # current versions + older ones still held
    _refused: dict[str, str]  # name -> why it was not taken at start
    _failed: dict[str, Exception]
    _lock: threading.RLock  # the maps; held briefly, the engine thread takes it

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

    def refusal(self, name: str, shown: str | None = None) -> AdapterRefusedError | None:
        """The error for qualified ``name`` if it was refused at start (naming it ``shown``,
        the name the caller used), else None."""
        with self._lock:
            reason = self._refused.get(name)
        return None if reason is None else AdapterRefusedError(shown or name, reason)

    def known(self, name: str) -> bool:
        """Whether qualified ``name`` is servable or was refused at start."""
        with self._lock:
            return name in self._refused or self._find(name) is not None

    def _publish(self, card: AdapterCard) -> None:
        with self._lock:
            self._refused.pop(card.name, None)
            self._cards[card.id] = card
            self._by_key[card.key] = card
            self._failed.pop(card.key, None)

    def hold(self, name: str) -> AdapterCard:
        """The current card of ``name`` with a reference on its version, taken under the lock a
        replace or delete publishes under: through any replace, that version stays servable
        (card and weights) until :meth:`release`; a delete keeps its card, and its weights if
        host memory has them."""
        with self._lock:
            card = self.get(name)
            self.host.acquire(card.key)
        return card

    def hold_card(self, card: AdapterCard) -> AdapterCard:
        """A reference on ``card``'s version (a card looked up before, by the API), as
        :meth:`hold` takes one on a name's current version: while the version is known it is
        held as is; one retired since (replaced meanwhile, and held by nobody) gives way to
        the name's current version, as if the request had arrived a moment later."""
        with self._lock:
            if self._by_key.get(card.key) is not None:
                self.host.acquire(card.key)
                return card
        return self.hold(card.name)

    def hold_key(self, key: str) -> None:
        """One more reference on a key already held (a request's children, a mix)."""
        self.host.acquire(key)

    def release(self, key: str) -> None:
        """Drop one reference; the last one on a replaced or removed version retires it."""
        self.host.release(key)

    def is_retired(self, key: str) -> bool:
        """Whether ``key`` is a version (``name@sha``) the catalog no longer knows: replaced or
        removed, and no request holds it. A per-request mix is never retired (never carded)."""
        with self._lock:
            return "@" in key and key not in self._by_key

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
