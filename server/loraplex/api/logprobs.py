"""Token log-probabilities in OpenAI's two shapes: legacy completions and chat completions.

The engine hands back ids and floats (:class:`TokenLogprob`); here they become token strings,
each decoded on its own (a token that is part of a multi-byte character decodes to U+FFFD, as
in vLLM), with chat's UTF-8 ``bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from loraplex.engine.outputs import TokenLogprob


class CompletionLogprobs(BaseModel):
    """Legacy completions: parallel lists, one entry per generated token (with ``echo``, per
    prompt token first; the prompt's first token has no logprob: null). ``top_logprobs[i]``
    maps the ``logprobs`` most likely tokens, and the sampled one, to their logprobs."""

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


def _token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(
    tokenizer: Any,
    entries: Sequence[TokenLogprob | None],
    offset: int,
    token_ids: Sequence[int] | None = None,
) -> tuple[CompletionLogprobs, int]:
    """The legacy object for ``entries``, whose first token starts at character ``offset`` of
    the text; also the offset just past the last token (where the next chunk starts).

    A None entry (the prompt's first token, with ``echo``) is a token without a logprob; its
    id comes from ``token_ids`` (the ids of all entries, needed only when one is None).
    """
    if token_ids is None:
        token_ids = [e.token_id for e in entries if e is not None]
    tokens = [_token(tokenizer, i) for i in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    top = [
        None if e is None else {_token(tokenizer, t): lp for t, lp in e.top} | {token: e.logprob}
        for e, token in zip(entries, tokens, strict=True)
    ]
    logprobs = CompletionLogprobs(
        text_offset=offsets,
        token_logprobs=[None if e is None else e.logprob for e in entries],
        tokens=tokens,
        top_logprobs=top,
    )
    return logprobs, offset


def chat_logprobs(tokenizer: Any, entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    def top(token_id: int, logprob: float) -> TopLogprob:
        token = _token(tokenizer, token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

    content = []
    for e in entries:
        chosen = top(e.token_id, e.logprob)
        alternatives = [top(t, lp) for t, lp in e.top]
        content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)
