"""One stored adapter read back into a card: at start-up (``scan``) and when another replica
changed it (``refresh``); no torch beyond what the folder check uses.

Reading every stored byte again at each start made start-up grow with the store (16 s instead
of ~8 s with 1.5 GB stored, issue 24). An adapter's identity is the sha256 of its weights,
recorded with ``values_checked`` in the store's metadata when it was stored after passing every
check; when the store vouches the file is still the one it wrote (``AdapterStore.unchanged``:
for a folder, its size and nanosecond mtime), only the config and the safetensors header are
checked again (they depend on the options and the model, which may have changed), and the
recorded hash is the card's version. Loading it into memory later checks every byte and
compares the hash, so a file changed behind the store's back is refused then, never served.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterError
from loraplex.adapters.folder_check import VALUE_CHECKS, CheckedFolder
from loraplex.adapters.rules import WEIGHTS_FILE
from loraplex.adapters.store import AdapterStore
from loraplex.adapters.tenancy import AdapterId

__all__ = ["describe", "read_stored", "trusted_version"]


def describe(name: str, folder: Path, checked: CheckedFolder, metadata: dict) -> AdapterCard:
    """A card from the checked adapter (config, weights hash) and the store's metadata; the
    version is the hash of the bytes checked, which are the bytes a load of it will find."""
    weights = folder / WEIGHTS_FILE
    return AdapterCard(
        name=name,
        version=checked.version,
        config=checked.config,
        size_bytes=weights.stat().st_size,
        created=int(metadata.get("created") or weights.stat().st_mtime),
        description=metadata.get("description"),
        pinned=bool(metadata.get("pinned", False)),
    )


def trusted_version(store: AdapterStore, name: str, metadata: dict) -> str | None:
    """The recorded sha256 of ``name``'s weights if they passed today's value checks when
    stored and the store vouches they are unchanged since; else None (read and check them)."""
    version = metadata.get("sha256")
    if not isinstance(version, str) or metadata.get("values_checked") != VALUE_CHECKS:
        return None  # placed by hand, stored by an older version, or checked by older rules
    return version if store.unchanged(name, metadata) else None


def read_stored(
    store: AdapterStore, name: str, check_folder: Callable[..., CheckedFolder]
) -> AdapterCard:
    """The card of stored adapter ``name``, checked as at upload (AdapterError if not), except
    that weights :func:`trusted_version` vouches for are not read again."""
    folder = store.fetch(name)
    metadata = store.metadata(name)
    owner = metadata.get("owner")  # none in a folder placed by hand: public
    if owner != AdapterId.parse(name).owner:
        raise AdapterError(f"its metadata names owner {owner!r}")
    checked = check_folder(folder, trusted_version=trusted_version(store, name, metadata))
    return describe(name, folder, checked, metadata)
