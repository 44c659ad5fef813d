"""One step's grammar masks: every constrained row's allowed tokens, applied in one call.

For row ``i`` with matcher ``m_i``, the bitmask row ``b_i`` (int32 [ceil(V / 32)]) has bit
``t`` set iff token ``t`` may come next; applying it sets ``logits[i, t] = -inf`` wherever the
bit is clear, so whatever the sampler does next (penalties, temperature, top-k/top-p, greedy)
it can only pick an allowed token. Rows without a matcher are not touched, whatever adapter
they run. The rows are filled by xgrammar's batch matcher (C++, threads, GIL released), then
one ``apply_token_bitmask_inplace`` masks them all: a CPU kernel on the CPU, a Triton kernel on
CUDA after one non-blocking copy of the bitmask.
"""

from __future__ import annotations

from typing import Any

import torch


class ConstraintMasks:
    """The engine's mask buffer for logits of width ``vocab_size`` on ``device``."""

    def __init__(self, vocab_size: int, device: torch.device, threads: int | str = "auto") -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._threads = threads
        self._host: torch.Tensor | None = None  # int32 [rows, ceil(V / 32)], grown on demand
        self._batch: Any = None

    @torch.inference_mode()  # the logits are inference tensors, updated in place
    def apply(self, logits: torch.Tensor, matchers: list[Any | None]) -> None:
        """Mask ``logits`` [N, V] in place: row ``i`` by ``matchers[i]`` (None: unconstrained;
        a terminated matcher's sequence is finishing and is left alone)."""
        rows = [i for i, m in enumerate(matchers) if m is not None and not m.is_terminated()]
        if not rows:
            return
        import xgrammar as xgr

        host = self._buffer(logits.shape[0])
        self._batch.batch_fill_next_token_bitmask([matchers[i] for i in rows], host, indices=rows)
        mask = host[: logits.shape[0]]
        if logits.device.type != "cpu":
            mask = mask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=self.vocab_size, indices=rows)

    def _buffer(self, rows: int) -> torch.Tensor:
        if self._host is None or self._host.shape[0] < rows:
            import xgrammar as xgr

            if self._batch is None:
                self._batch = xgr.BatchGrammarMatcher(max_threads=self._threads)
            size = max(rows, 2 * (0 if self._host is None else self._host.shape[0]))
            host = xgr.allocate_token_bitmask(size, self.vocab_size)
            # Pinned on CUDA, so the copy up does not wait; the step's one device->host copy
            # (the sampled tokens) comes after it, so the buffer is free again next step.
            self._host = host.pin_memory() if self.device.type == "cuda" else host
        return self._host


def accept(matcher: Any, token: int) -> bool:
    """Advance ``matcher`` by the sampled ``token``; False if the grammar refuses it (which
    the mask makes impossible, unless the row's logits were not finite)."""
    return bool(matcher.accept_token(token))
