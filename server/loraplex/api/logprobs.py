"""Token log-probabilities in OpenAI's two shapes: legacy completions and chat completions.

The engine hands back ids and floats (:class:`TokenLogprob`); here they become token strings
(:class:`~loraplex.api.token_text.TokenText`: distinct ids get distinct keys; a piece of a
multi-byte character is ``bytes:\\x..``; ``token_id:N`` with ``return_tokens_as_token_ids``),
with chat's raw UTF-8 ``bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from loraplex.api.token_text import TokenText
from loraplex.engine import TokenLogprob


class CompletionLogprobs(BaseModel):
    """Legacy completions: parallel lists, one entry per generated token (with ``echo``, per
    prompt token first; the prompt's first token has no logprob: null). ``top_logprobs[i]``
    maps the ``logprobs`` most likely tokens, and the sampled one (key ``tokens[i]``), to their
    logprobs; two ids never share a key, so the most likely key is the argmax."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]

    def __add__(self, other: CompletionLogprobs) -> CompletionLogprobs:
        return CompletionLogprobs(
            text_offset=self.text_offset + other.text_offset,
            token_logprobs=self.token_logprobs + other.token_logprobs,
            tokens=self.tokens + other.tokens,
            top_logprobs=self.top_logprobs + other.top_logprobs,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """Chat completions: one entry per generated token, with its ``top_logprobs`` alternatives."""

    content: list[ChatTokenLogprob]


def completion_logprobs(
    tokenizer: Any,
    entries: Sequence[TokenLogprob | None],
    offset: int,
    token_ids: Sequence[int] | None = None,
    as_ids: bool = False,
) -> tuple[CompletionLogprobs, int]:
    """The legacy object for ``entries``, whose first token starts at character ``offset`` of
    the text; also the offset just past the last token (where the next chunk starts).

    A None entry (the prompt's first token, with ``echo``) is a token without a logprob; its
    id comes from ``token_ids`` (the ids of all entries, needed only when one is None).
    ``as_ids``: tokens and keys are ``token_id:N`` (vLLM's ``return_tokens_as_token_ids``).
    """
    if token_ids is None:
        token_ids = [e.token_id for e in entries if e is not None]
    names = TokenText(tokenizer, as_ids)
    offsets = []
    for token_id in token_ids:  # offsets count the characters of the decoded text
        offsets.append(offset)
        offset += len(tokenizer.decode([token_id]))
    tokens, top = [], []
    for e, token_id in zip(entries, token_ids, strict=True):
        if e is None:
            tokens.append(names.text(token_id))
            top.append(None)
            continue
        # The most likely ids claim their texts first; the sampled one is looked up by its key.
        keys = names.keys([t for t, _ in e.top] + [e.token_id])
        tokens.append(keys[e.token_id])
        top.append({keys[t]: lp for t, lp in e.top} | {keys[e.token_id]: e.logprob})
    logprobs = CompletionLogprobs(
        text_offset=offsets,
        token_logprobs=[None if e is None else e.logprob for e in entries],
        tokens=tokens,
        top_logprobs=top,
    )
    return logprobs, offset


def chat_logprobs(
    tokenizer: Any, entries: Sequence[TokenLogprob], as_ids: bool = False
) -> ChatLogprobs:
    """One entry per token: its string, logprob and raw UTF-8 ``bytes`` (the pieces of one
    multi-byte character concatenate to it), and its ``top_logprobs`` alternatives likewise."""
    names = TokenText(tokenizer, as_ids)

    def top(token_id: int, logprob: float) -> TopLogprob:
        raw = list(names.raw(token_id))
        return TopLogprob(token=names.text(token_id), logprob=logprob, bytes=raw)

    content = []
    for e in entries:
        chosen = top(e.token_id, e.logprob)
        alternatives = [top(t, lp) for t, lp in e.top]
        content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)
