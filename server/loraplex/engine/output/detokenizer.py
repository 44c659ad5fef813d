"""Incremental detokenization and stop-string handling for one streaming request.

Text is produced with the prefix-offset / read-offset technique (as in vLLM and TGI): each step
decodes only a short window of recent tokens, ``ids[prefix_offset:]``, and emits what it adds
beyond ``ids[prefix_offset:read_offset]``, which was already emitted. Decoding a window rather
than single tokens keeps tokenizers that drop or merge leading spaces right, and decoding a
window rather than everything keeps each step O(1) in the output length. A window whose text
ends in U+FFFD is an incomplete UTF-8 sequence (a character split across byte-level tokens), so
it is held back until the next token completes it.

Stop strings are matched on the decoded text, incrementally (``stop_matcher.py``: O(new
characters) per token, whatever the text's length). Text that could still grow into a stop
string (a suffix that is a prefix of one) is held back too, so a client never sees a stop
string's head that would later be cut away.
"""

from __future__ import annotations

from typing import Any

from loraplex.engine.output.stop_matcher import StopMatcher
from loraplex.engine.request.params import SamplingParams

# Prompt tokens decoded as left context of the first output token: enough for tokenizers whose
# decoding of a token depends on its neighbours (e.g. SentencePiece's leading-space marker).
_PROMPT_CONTEXT_TOKENS = 5
# A UTF-8 character is at most 4 bytes, so a window still ending in U+FFFD after this many
# undecoded tokens holds invalid bytes (or a real U+FFFD) that no later token will repair.
_MAX_PENDING_TOKENS = 8


class IncrementalDetokenizer:
    """Turns one request's generated tokens into text deltas, stopping at ``params.stop``.

    Invariant: the concatenation of every ``step`` delta plus ``flush()`` equals ``text``.
    Stop token ids and EOS are the engine's business: do not feed them in.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._tokenizer = tokenizer
        self._skip_special = params.skip_special_tokens
        self._stops = StopMatcher(params.stop)
        self._include_stop = params.include_stop_str_in_output
        # Only the prompt's tail is ever decoded, so only the tail is kept.
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._text = ""  # decoded output text, truncated at a stop string once one is hit
        self._emitted = 0  # length of the prefix of _text already returned to the caller
        self._stopped = False

    @property
    def text(self) -> str:
        """Output text decoded so far (truncated at a stop string), held-back text included."""
        return self._text

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been hit; later tokens are ignored."""
        return self._stopped

    def step(self, token_id: int) -> tuple[str, bool]:
        """Feed one generated token; returns (new_text_delta, hit_stop_string)."""
        if self._stopped:
            return "", True
        self._ids.append(token_id)
        hit = self._append(self._decode_new(force=False))
        return self._take(hold_back=not hit), hit

    def flush(self) -> str:
        """Release everything held back; call once when the request ends for another reason."""
        if not self._stopped:
            self._append(self._decode_new(force=True))
        return self._take(hold_back=False)

    def _decode(self, ids: list[int]) -> str:
        # No space clean-up: it rewrites text depending on its neighbours, so window decodes
        # would stop being prefixes of one another.
        return self._tokenizer.decode(
            ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False
        )

    def _decode_new(self, *, force: bool) -> str:
        """Text added by tokens past ``read_offset``, or "" while it is an incomplete character."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        pending = len(self._ids) - self._read_offset
        incomplete = new_text.endswith("\ufffd") and pending < _MAX_PENDING_TOKENS
        # Shorter-or-equal text: e.g. a skipped special token; wait for tokens that add text.
        if len(new_text) <= len(prefix_text) or (incomplete and not force):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]

    def _append(self, delta: str) -> bool:
        """Add ``delta`` to the text; on a stop string, truncate there and return True."""
        if not delta:
            return False
        self._text += delta
        found = self._stops.feed(delta)  # a new match must end inside delta
        if found is None:
            return False
        index, stop = found
        self._text = self._text[: index + len(stop) if self._include_stop else index]
        self._stopped = True
        return True

    def _take(self, *, hold_back: bool) -> str:
        """Return the not-yet-emitted text, minus a trailing partial stop string if holding."""
        end = len(self._text) - (self._stops.partial() if hold_back else 0)
        delta = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return delta
