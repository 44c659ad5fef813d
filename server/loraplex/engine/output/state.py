"""One request's state in the engine: a parent per client request, a child per sample.

A client request carries ``P`` prompts and asks for ``n`` samples of each (OpenAI's ``n``), so
it becomes ``P · n`` sequences. Child ``index = i · n + j`` is sample ``j`` of prompt ``i``
(OpenAI's choice order); with a seed ``s``, sample ``j`` draws with seed ``s + j`` (as vLLM),
so the samples differ and each one is reproducible. Everything one sequence owns lives in its
:class:`RequestState`: the scheduler's :class:`Sequence`, the detokenizer, the random
generator, whether it holds its adapter in host memory, and the timing the metrics report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.engine.constraints.grammar import Grammar
from loraplex.engine.output.detokenizer import IncrementalDetokenizer
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence


@dataclass(eq=False)
class RequestState:
    """One sample of one prompt, from its arrival to its last output."""

    parent: ParentRequest
    index: int  # choice index within the parent: i * n + j
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    holds_adapter: bool = False  # a host-memory reference on seq.adapter, released once
    holds_merged: bool = False  # holds seq.adapter's merged copy (adapter_tiers/merged.py), once
    first_token_time: float | None = None  # monotonic time of its first output
    last_token_time: float | None = None  # of its latest output token (inter-token latency)
    sent_prompt_logprobs: bool = False  # they go out once, with the first output
    finish_reason: str | None = None  # why it stopped (the output processor decides)
    # Its grammar's state (engine/constraints), None when unconstrained: masks its logits each
    # step and accepts each sampled token. Preemption keeps the tokens, so it stays right.
    matcher: Any = None
    finished: bool = False  # the engine finished it: blocks freed, adapter released

    @property
    def params(self) -> SamplingParams:
        return self.seq.params


@dataclass(eq=False)
class ParentRequest:
    """A client request: its id, adapter, arrival time and its ``P · n`` children."""

    request_id: str
    adapter: str | None  # the adapter key, None for the base model
    merged: bool  # that adapter runs pre-merged into the weights
    tenant: str = DEFAULT_TENANT  # who asked (its queue limit and the fair waiting queue)
    arrival_time: float = field(default_factory=time.monotonic)
    children: list[RequestState] = field(default_factory=list)
    holds_adapter: bool = False  # prepare's reference on ``adapter``, until submit or drop

    @property
    def finished(self) -> bool:
        return all(child.finished for child in self.children)


def sample_params(params: SamplingParams, j: int) -> SamplingParams:
    """Sample ``j``'s parameters: the request's, with seed ``seed + j`` when seeded."""
    if j == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + j)


def make_request(
    request_id: str,
    prompts: list[list[int]],
    params: SamplingParams,
    adapter: str | None,
    merged: bool,
    *,
    tokenizer: Any,
    device: torch.device,
    n: int = 1,
    cache_salt: str | None = None,
    tenant: str = DEFAULT_TENANT,
    grammar: Grammar | None = None,
) -> ParentRequest:
    """Build the parent and its children; nothing is acquired or queued yet, so a failure here
    (a seed torch refuses, say) leaves no trace. ``grammar``: the compiled constraint of
    ``params.constraint``; every child gets its own matcher."""
    parent = ParentRequest(request_id, adapter, merged, tenant)
    for i, prompt in enumerate(prompts):
        for j in range(n):
            index = i * n + j
            child_params = sample_params(params, j)
            seq = Sequence(
                f"{request_id}-{index}",
                list(prompt),
                child_params,
                adapter=adapter,
                merged=merged,
                cache_salt=cache_salt,
                tenant=tenant,
                arrival_time=parent.arrival_time,
            )
            generator = None
            if child_params.seed is not None:
                generator = torch.Generator(device).manual_seed(child_params.seed)
            detokenizer = IncrementalDetokenizer(tokenizer, seq.prompt_token_ids, child_params)
            state = RequestState(parent, index, seq, detokenizer, generator)
            state.matcher = None if grammar is None else grammar.matcher()
            parent.children.append(state)
    return parent
