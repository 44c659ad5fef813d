"""Pre-merged copies: copies ``W = W0 + scale·B·A`` of the modules an adapter targets, kept
beside the untouched ``W0`` (so unmerging is exact: the copy is dropped).

Each copy costs a full base weight per targeted module (a rank-1 adapter on all seven
projections of a 135M model: ~550 MB), so they are capped by ``--max-merged-adapters`` and
their bytes are reported. The life of one copy::

    begin (any thread: the cap)  ->  compute (merge worker thread: reads W0, the heavy part)
      ->  install (engine thread, between steps: one dict store per module)  ->  serving
      ->  leave (unmerge, delete or replace: new requests run dynamically or get a 404)
      ->  dropped once no sequence that started on it is unfinished (freed off the engine)

A sequence admitted as pre-merged ``hold``s its copy until it finishes (``release``), so a
running request always finishes on the weights it started with.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from loraplex import metrics
from loraplex.adapters.weights import LoRAAdapter
from loraplex.engine.errors import CapacityError, ParameterError
from loraplex.lora.manager import LoRAModelManager

log = logging.getLogger(__name__)


class MergeRefusedError(CapacityError):
    """This base cannot hold a merged copy at all (HTTP 409, the reason named): a quantized
    projection whose weight has no exact dequantization here. Never a silently wrong merge."""


@dataclass
class MergedCopy:
    """One adapter's merged weights; ``users``: unfinished sequences admitted on them."""

    weights: dict[str, torch.Tensor]
    nbytes: int
    users: int = 0
    leaving: bool = False  # unmerged or deleted: no new request starts on it


class MergedCopies:
    """At most ``limit`` merged copies in memory (leaving ones included) or being computed.

    The maps are guarded by one lock, so ``begin``, ``serves`` and the byte counts may be asked
    from any thread; ``install``, ``leave``, ``hold`` and ``release`` run on the engine thread,
    which alone touches the layers' merged weights.
    """

    def __init__(self, manager: LoRAModelManager, limit: int) -> None:
        self.manager = manager
        self.limit = limit
        self._copies: dict[str, MergedCopy] = {}
        self._computing: set[str] = set()
        self._lock = threading.Lock()
        # A quantized base is dequantized to merge (copies in the compute dtype); a format with
        # no exact dequantization refuses every merge.
        self.refusal = manager.merge_refusal()
        # One worker: merges are computed one at a time, and dropped copies are freed there.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="loraplex-merge")

    # ---- any thread ----------------------------------------------------------------------

    def serves(self, key: str) -> bool:
        """Whether new requests for ``key`` run pre-merged."""
        with self._lock:
            copy = self._copies.get(key)
            return copy is not None and not copy.leaving

    def serving(self) -> list[str]:
        """The keys whose new requests run pre-merged."""
        with self._lock:
            return [key for key, copy in self._copies.items() if not copy.leaving]

    def nbytes(self, key: str) -> int:
        """Bytes held for ``key``'s copy (0 if none), leaving copies included."""
        with self._lock:
            copy = self._copies.get(key)
            return copy.nbytes if copy is not None else 0

    def begin(self, key: str) -> bool:
        """Start merging ``key``; False if nothing needs computing (a copy serves it already, or a
        leaving one that still exists is put back in service). Past the cap: CapacityError;
        on a base that cannot be merged into: MergeRefusedError."""
        if self.refusal is not None:
            raise MergeRefusedError(
                "merge",
                f"this base model's weights cannot be merged into ({self.refusal}); "
                "the adapter is served unmerged",
            )
        with self._lock:
            copy = self._copies.get(key)
            if copy is not None:
                copy.leaving = False
                return False
            held = len(self._copies) + len(self._computing)
            if held >= self.limit:
                leaving = sum(c.leaving for c in self._copies.values())
                raise CapacityError(
                    "merge",
                    f"at most {self.limit} adapters can be merged at once "
                    f"(--max-merged-adapters); {held} merged copies are held now"
                    + (f" ({leaving} until their running requests finish)" if leaving else "")
                    + ": unmerge one first",
                )
            self._computing.add(key)
            return True

    def compute(self, adapter: LoRAAdapter) -> Future[dict[str, torch.Tensor]]:
        """The merged weights of ``adapter``, computed on the merge worker thread. An adapter
        of MoE expert tensors or routers is refused (a 400): it is served unmerged."""
        if unmergeable := self.manager.unmergeable(adapter):
            raise ParameterError(
                "name",
                f"adapter {adapter.name!r} adapts MoE expert tensors or routers "
                f"({', '.join(unmergeable[:2])}{' ...' if len(unmergeable) > 2 else ''}), which "
                "cannot be merged; it is served unmerged",
            )
        return self._worker.submit(self.manager.merged_weights, adapter)

    def wait_idle(self) -> None:
        """Wait until the merge worker has done what it was given (computations, frees)."""
        self._worker.submit(lambda: None).result()

    def cancel(self, key: str) -> None:
        """A merge that began failed or was refused: its place under the cap is free again."""
        with self._lock:
            self._computing.discard(key)

    # ---- engine thread -------------------------------------------------------------------

    def install(self, key: str, weights: dict[str, torch.Tensor]) -> None:
        """Swap a computed copy in: from the next step on, requests for ``key`` run on it."""
        nbytes = sum(w.numel() * w.element_size() for w in weights.values())
        with self._lock:
            self._computing.discard(key)
            self._copies[key] = MergedCopy(weights, nbytes)
        self.manager.install_merged(key, weights)
        self._report()

    def leave(self, key: str) -> None:
        """No new request starts on ``key``'s copy; it goes once its last sequence ends."""
        with self._lock:
            copy = self._copies.get(key)
            if copy is None:
                return
            copy.leaving = True
            drop = copy.users == 0
        if drop:
            self._drop(key)

    def hold(self, key: str, count: int = 1) -> bool:
        """``count`` sequences start on ``key``'s copy; False if it is gone (unmerged and
        dropped after they were prepared): they must run dynamically instead."""
        with self._lock:
            copy = self._copies.get(key)
            if copy is None:
                return False
            copy.users += count
            return True

    def release(self, key: str) -> None:
        """One sequence that held ``key``'s copy finished."""
        with self._lock:
            copy = self._copies.get(key)
            if copy is None:
                return
            copy.users -= 1
            drop = copy.leaving and copy.users == 0
        if drop:
            self._drop(key)

    def _drop(self, key: str) -> None:
        with self._lock:
            copy = self._copies.get(key)
            if copy is None or copy.users or not copy.leaving:  # put back in service meanwhile
                return
            del self._copies[key]
        dropped = self.manager.unmerge(key)
        copy.weights.clear()
        # Freeing a model-sized copy takes tens of ms: the worker drops the last references.
        self._worker.submit(_free, dropped)
        self._report()

    def _report(self) -> None:
        with self._lock:
            count = len(self._copies)
            total = sum(c.nbytes for c in self._copies.values())
        metrics.MERGED_ADAPTERS.set(count)
        metrics.MERGED_ADAPTER_BYTES.set(total)
        log.info("merged copies: %d holding %.1f MB", count, total / 2**20)


def _free(tensors: list[torch.Tensor]) -> None:
    """Drop the last references to a dropped copy and give its pages back to the OS.

    The copy was allocated on the merge worker, i.e. in one of glibc's per-thread arenas, which
    keep freed memory for reuse: without ``malloc_trim`` the process would stay a copy larger
    after every unmerge. Elsewhere (no glibc) freeing is all there is to do.
    """
    tensors.clear()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()
