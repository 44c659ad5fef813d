"""Every check a request passes before anything is queued, in one place: how many sequences it
fans out to, whether its text can be tokenized at all, and whether each prompt fits the model.

Host-side and thread-safe (no engine state), so the API calls the cheap ones on the event loop
before it tokenizes (:meth:`Intake.check_fanout`, :meth:`Intake.check_text`) and the engine
calls :meth:`Intake.check_request` on the token ids when it builds the request. Every refusal
is a :class:`ParameterError` naming the request field (a 400).
"""

from __future__ import annotations

import functools
from typing import Any

from loraplex.engine.errors import ParameterError
from loraplex.engine.request.params import SamplingParams


class Intake:
    """The limits one request is checked against: the model's vocabulary and context length
    and ``--max-seqs-per-request``."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, max_model_len: int, max_seqs_per_request: int
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.max_seqs_per_request = max_seqs_per_request

    def check_fanout(self, num_prompts: int, n: int) -> None:
        """A request queues ``num_prompts * n`` sequences; refuse more than the option allows
        (before anything is tokenized, so call it first)."""
        limit = self.max_seqs_per_request
        if num_prompts * n > limit:
            raise ParameterError(
                "n" if n > 1 else "prompt",
                f"{num_prompts} prompts x n={n} is more than the {limit} sequences one request "
                "may queue (--max-seqs-per-request)",
            )

    def check_encodable(self, text: str, param: str) -> None:
        """Text must be encodable as UTF-8: JSON allows lone surrogates (``"\\ud800"``), which no
        tokenizer takes."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParameterError(param, f"{param} holds a lone surrogate at {exc.start}") from None

    def check_length(self, text: str, param: str = "prompt") -> None:
        """Refuse, from its length alone, text that must be longer than the context
        (:attr:`max_prompt_chars`), so nothing is tokenized to find out."""
        if len(text) > self.max_prompt_chars:
            raise ParameterError(
                param,
                f"{param} has {len(text)} characters, so more tokens than the model's context "
                f"length of {self.max_model_len} tokens",
            )

    def check_text(self, text: str, param: str = "prompt") -> None:
        """A text prompt, before it is tokenized: encodable, and not longer than any context."""
        self.check_encodable(text, param)
        self.check_length(text, param)

    @property
    def max_prompt_chars(self) -> int:
        """The most characters a prompt that fits the context can have: text of ``L``
        characters has at least ``L / max_chars_per_token`` tokens."""
        return self.max_model_len * self.max_chars_per_token

    @functools.cached_property
    def max_chars_per_token(self) -> int:
        """The longest vocabulary entry, in characters: no token decodes to more characters than
        its own entry has (byte-level entries spell one character per byte, SentencePiece ones
        one per character; byte-fallback ``<0xNN>`` entries decode to less)."""
        return max((len(token) for token in self.tokenizer.get_vocab()), default=1) or 1

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Refuse what can never run, before it is queued."""
        if not prompt_ids:
            raise ParameterError("prompt", "the prompt is empty")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise ParameterError("prompt", f"token ids must be in [0, {self.vocab_size})")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ParameterError(
                "max_tokens" if len(prompt_ids) < self.max_model_len else "prompt",
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's context length of {self.max_model_len} tokens",
            )

    def check_request(self, prompts: list[list[int]], params: SamplingParams, n: int) -> None:
        """The fan-out, then every prompt."""
        self.check_fanout(len(prompts), n)
        for prompt in prompts:
            self.check_prompt(prompt, params)
