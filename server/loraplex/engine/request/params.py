"""Per-request sampling parameters, validated once when the request is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraplex.engine.constraints.spec import ConstraintSpec

from loraplex.engine.errors import ParameterError

MAX_LOGPROBS = 20  # most alternatives per token, as OpenAI allows
# Stop conditions run on the engine thread for every token of the request, so their size is
# capped (OpenAI allows 4 stop strings; the matcher is linear in any case).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
MAX_STOP_TOKEN_IDS = 256
MAX_TOP_K = 2**31 - 1  # any k past the vocabulary means "off"; beyond this torch overflows
# torch.Generator.manual_seed takes a 64-bit seed; sample j of n uses seed + j.
SEED_RANGE = (-(2**63), 2**63 - 1)
# The largest seed the OpenAPI schema states: 2**63 - 1 read as a JSON-schema float rounds up to
# 2**63, which fuzzers then send as "valid"; 2**63 - 1024 is the largest float64 below it.
DOCUMENTED_SEED_MAX = 2**63 - 1024


def _check(condition: bool, param: str, message: str) -> None:
    if not condition:
        raise ParameterError(param, message)


def check_logprobs(value: int | None, param: str) -> None:
    """A count of most-likely alternatives (None: off) must be in [0, MAX_LOGPROBS]; the error
    names ``param``, the field as the caller's API spells it."""
    _check(
        value is None or 0 <= value <= MAX_LOGPROBS,
        param,
        f"{param} must be in [0, {MAX_LOGPROBS}]",
    )


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its next tokens.

    ``temperature == 0`` is greedy. ``top_k <= 0`` and ``top_p == 1`` disable those filters.
    Penalties follow vLLM/OpenAI: ``repetition_penalty`` divides positive (multiplies negative)
    logits of tokens seen in prompt or output; ``presence_penalty`` subtracts once per seen output
    token; ``frequency_penalty`` subtracts once per occurrence in the output.
    ``logprobs`` are the model's own (log-softmax of the raw logits, before penalties and
    temperature), as vLLM reports them by default.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None  # None: off; k: each token's logprob and the k most likely
    # None: off; k: every prompt token's logprob given the tokens before it (the first has
    # none) and the k most likely there. Such a request computes its whole prompt: no prefix
    # cache hits (cached tokens have no logits).
    prompt_logprobs: int | None = None
    # What the output must match (engine/constraints): compiled before the request is queued;
    # each sample gets its own matcher, and tokens the grammar refuses are masked.
    constraint: ConstraintSpec | None = None
    # Special tokens in the text (off for most requests; tool parsers whose markers are
    # special tokens need them).
    skip_special_tokens: bool = True
    stop_token_set: frozenset[int] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # 0: score the prompt only (its prompt_logprobs), generate nothing (echo's use).
        _check(self.max_tokens >= 0, "max_tokens", "max_tokens must be at least 0")
        _check(
            math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0,
            "temperature",
            "temperature must be in [0, 2]",
        )
        _check(0.0 < self.top_p <= 1.0, "top_p", "top_p must be in (0, 1]")
        _check(
            -1 <= self.top_k <= MAX_TOP_K,
            "top_k",
            f"top_k must be -1, 0 (off) or a positive integer up to {MAX_TOP_K}",
        )
        _check(
            math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0.0,
            "repetition_penalty",
            "repetition_penalty must be positive",
        )
        _check(
            -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            "presence_penalty must be in [-2, 2]",
        )
        _check(
            -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            "frequency_penalty must be in [-2, 2]",
        )
        _check(all(s for s in self.stop), "stop", "stop strings must not be empty")
        _check(
            len(self.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} stop strings"
        )
        _check(
            all(len(s) <= MAX_STOP_CHARS for s in self.stop),
            "stop",
            f"a stop string has at most {MAX_STOP_CHARS} characters",
        )
        _check(
            len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS,
            "stop_token_ids",
            f"at most {MAX_STOP_TOKEN_IDS} stop token ids",
        )
        _check(all(t >= 0 for t in self.stop_token_ids), "stop_token_ids", "token ids are >= 0")
        _check(
            self.seed is None or SEED_RANGE[0] <= self.seed <= SEED_RANGE[1],
            "seed",
            f"seed must be a 64-bit signed integer, in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]",
        )
        # Looked up for every generated token: a set, not a scan of the tuple.
        object.__setattr__(self, "stop_token_set", frozenset(self.stop_token_ids))
        check_logprobs(self.logprobs, "logprobs")
        check_logprobs(self.prompt_logprobs, "prompt_logprobs")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
