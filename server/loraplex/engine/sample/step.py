"""One step's sampling, every row at once: rows whose logits went inf/NaN are set aside, the
grammar masks of constrained rows applied in one call, the tokens drawn with each row's
parameters, and the tokens with the logprobs asked for read back in one device->host copy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from loraplex.engine.constraints import ConstraintMasks
from loraplex.engine.request.outputs import TokenLogprob
from loraplex.engine.sample.logprobs import read_sampled
from loraplex.engine.sample.sampler import Sampler, guard_non_finite

if TYPE_CHECKING:
    from loraplex.engine.output.state import RequestState

# One step's sampled tokens (``NON_FINITE`` for a non-finite row) and their logprob entries
# (None where not asked for).
Sampled = tuple[list[int], list[TokenLogprob | None]]


class StepSampler:
    """The sampler and the grammar masks of one engine (``vocab_size`` logits on ``device``)."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.sampler = Sampler()
        self.masks = ConstraintMasks(vocab_size, device)  # constrained rows' masks

    def sample(self, states: list[RequestState], logits: torch.Tensor) -> Sampled:
        """Row i of ``logits`` [N, V] belongs to ``states[i]``: its token and logprob entry."""
        finite = guard_non_finite(logits)
        self.masks.apply(logits, [s.matcher for s in states])  # one call for every grammar row
        tokens = self.sampler.sample(
            logits,
            [s.params for s in states],
            [s.seq.prompt_token_ids for s in states],
            [s.seq.output_token_ids for s in states],
            [s.generator for s in states],
        )
        return read_sampled(tokens, logits, [s.params.logprobs for s in states], finite)
