"""One request's token state as the engine sees it (host-side, no torch)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.engine.request.outputs import TokenLogprob
from loraplex.engine.request.params import SamplingParams

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Prompt plus generated tokens, and how much of it is already in the KV cache.

    Invariant: ``0 <= num_computed_tokens <= num_tokens``. A step feeds the model
    ``token_ids[num_computed_tokens : num_computed_tokens + n]``; when that chunk reaches the
    last token the step also samples one new token.
    ``adapter`` is the adapter key the request runs with, ``None`` for the base model;
    ``merged`` says that adapter runs pre-merged into the weights (no slot, no per-token cost).
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: str | None = None
    merged: bool = False
    cache_salt: str | None = None  # isolates this request's prefix-cache entries (tenants)
    tenant: str = DEFAULT_TENANT  # who asked: the waiting queue is fair across tenants
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    # Prefix-cache hashes of the leading full blocks (content-derived: kept across preemption).
    block_hashes: list[bytes] = field(default_factory=list, repr=False)
    status: SequenceStatus = SequenceStatus.WAITING
    arrival_time: float = field(default_factory=time.monotonic)
    finish_reason: str | None = None
    # Prompt tokens taken from the prefix cache when last admitted (not recomputed).
    num_cached_tokens: int = 0
    # With params.prompt_logprobs: entry i for prompt token i (entry 0 is None: nothing comes
    # before it), filled as prefill chunks run; kept across preemption, so never computed twice.
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list, repr=False)
    # Schedules in which this waiting sequence was passed over: its adapter did not fit the
    # slot budget, or (adapter affinity) a later request of its tenant went first; the
    # starvation guard and affinity's bound read it; reset when it is admitted.
    adapter_skips: int = 0
    # Monotonic time of the first step that scheduled it (its queue time ends there).
    first_scheduled_time: float | None = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.wants_prompt_logprobs:
            self.prompt_logprobs = [None]

    @property
    def arrival_key(self) -> tuple[float, int]:
        """Arrival order; ``seq_id`` breaks ties between requests created within one clock tick."""
        return (self.arrival_time, self.seq_id)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: the KV cache is dropped and rebuilt from all tokens later."""
        self.num_computed_tokens = 0
        self.block_table = []
        self.status = SequenceStatus.WAITING
