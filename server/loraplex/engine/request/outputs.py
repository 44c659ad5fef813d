"""What the engine hands back to the API for each request, once per step that produced text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log-probability and the ``k`` most likely ``(token_id, logprob)``,
    most likely first (the model's distribution, before penalties and temperature)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class RequestOutput:
    """A delta of one child of a request (sample ``index``; see ``engine/output/state.py``).

    ``text`` and ``token_ids`` are new since the previous output of the same request;
    ``num_output_tokens`` is cumulative. ``finish_reason`` is ``"stop"`` (EOS, stop string or
    stop token), ``"length"`` (max_tokens or the model's context) or ``"abort"``.
    ``num_cached_tokens``: prompt tokens whose KV came from the prefix cache. ``logprobs``: set
    when the request asked for them. ``prompt_logprobs``: in the request's first output only,
    when it asked for them; one per prompt token, the first None. ``error``: set on the last
    output of a child that could not run (its adapter failed to load, the step failed).
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per token of ``token_ids``
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    index: int = 0  # the child's choice index: prompt i, sample j of n -> i * n + j
    error: Exception | None = None
