"""Writes adapter weights into the device slot tables without holding up the compute stream.

On CUDA the host tier keeps adapters in pinned (page-locked) memory, so writing a slot is a DMA
the host does not wait for: :class:`CudaSlotCopier` issues it with ``non_blocking=True`` on a
stream of its own and records an event after it; the compute stream waits on that event before
the first step that reads the slot, and no other step waits at all. Three rules keep it right:

1. Read after write: a step that reads slot ``s`` first makes the compute stream wait for every
   unfinished write of ``s`` (:meth:`SlotCopier.wait_for`, called before the step's forward).
2. Write after read: a write of ``s`` must not overtake the steps already issued that read the
   adapter it replaces, so the copy stream first waits for the compute stream's work issued so
   far. While every step ends with the sampled tokens' device->host copy, that work is done
   when the next step's loads are issued, and the wait costs nothing (with asynchronous
   scheduling, per-slot "last read" events would narrow it).
3. Lifetime: the host tensors a write reads stay referenced until its event has completed, so
   an adapter the host cache evicts (or a replaced version it drops) mid-copy stays intact.

On the CPU (any device but CUDA) :class:`SlotCopier` runs the same calls synchronously: every
write is complete when it returns, and nothing ever waits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch

from loraplex.lora.slot_writes import SlotWrites


class Fence(Protocol):
    """The end of one slot write, as the compute stream sees it."""

    def done(self) -> bool:
        """Whether the write has completed (its host tensors may then go)."""
        ...

    def hold_compute(self) -> None:
        """Make work issued from now on to the compute stream wait for the write."""
        ...


class CompleteFence:
    """A write that was complete when it returned (the synchronous copier's)."""

    def done(self) -> bool:
        return True

    def hold_compute(self) -> None:
        return None


class CudaFence:
    """A CUDA event recorded on the copy stream after a slot's writes."""

    def __init__(self, event: torch.cuda.Event, device: torch.device) -> None:
        self.event = event
        self.device = device

    def done(self) -> bool:
        return self.event.query()

    def hold_compute(self) -> None:
        torch.cuda.current_stream(self.device).wait_event(self.event)


class SlotCopier:
    """Synchronous slot writes (the CPU's); the base of the CUDA copier."""

    asynchronous = False  # whether writes may still run after the host returns

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.writes: SlotWrites[Fence] = SlotWrites()

    def copy(self, dst: torch.Tensor, src: torch.Tensor, scale: float = 1.0) -> None:
        """``dst[...] = scale · src`` for a host ``src`` and a slot-table view ``dst``.

        The product is taken in ``src``'s dtype and rounded to ``dst``'s once, as it lands (on
        the device: a same-dtype copy from the host, then the multiply and the cast there; a
        host-to-device copy that also casts would cast on the host, into pageable memory).
        """
        if scale == 1.0 and src.dtype == dst.dtype:
            dst.copy_(src, non_blocking=self.asynchronous)
            return
        staged = src.to(dst.device, non_blocking=self.asynchronous)  # src itself on the CPU
        dst.copy_(staged * scale if scale != 1.0 else staged)

    @contextmanager
    def writing(self, slot: int, keepalive: object) -> Iterator[None]:
        """Issue the writes of ``slot`` inside this block (with :meth:`copy` and in-place
        ops on its table rows); ``keepalive`` (the host tensors they read) is held until they
        are done. A write that raises still gets its fence: part of it may be in flight."""
        try:
            yield
        finally:
            self.writes.add(slot, self._fence(), keepalive)

    def _fence(self) -> Fence:
        return CompleteFence()

    def wait_for(self, slots: Iterable[int]) -> int:
        """Before a step that reads ``slots``: the compute stream waits for their unfinished
        writes (rule 1); finished writes release their host tensors. Returns the waits issued."""
        return self.writes.wait_for(slots)

    def is_ready(self, slot: int) -> bool:
        """Whether every write of ``slot`` has completed (a step reading it would not wait)."""
        return not self.writes.in_flight(slot)


class CudaSlotCopier(SlotCopier):
    """Slot writes on a dedicated CUDA stream, fenced by events (rules 1-3 above)."""

    asynchronous = True

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.stream = torch.cuda.Stream(device)

    @contextmanager
    def writing(self, slot: int, keepalive: object) -> Iterator[None]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # rule 2
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            self.writes.add(slot, self._fence(), keepalive)

    def _fence(self) -> Fence:
        event = torch.cuda.Event()
        event.record(self.stream)
        return CudaFence(event, self.device)


def slot_copier(device: torch.device) -> SlotCopier:
    """The copier for slot tables on ``device``: CUDA's stream copier, else synchronous."""
    return CudaSlotCopier(device) if device.type == "cuda" else SlotCopier(device)
