"""One token id as logprobs clients see it: its text, its raw bytes, a key unique in its map.

A token decoded on its own is ambiguous: the byte pieces of one multi-byte character (a byte
of "日" in a byte-level BPE, ``<0xE6>`` in a SentencePiece byte fallback) each decode to
U+FFFD, and a SentencePiece ``▁the`` decodes as ``the`` does. As keys of a ``top_logprobs`` map
they collide, and the sampled token's entry overwrote the most likely one's, so a scoring
client (lm-evaluation-harness) read a wrong ``is_greedy``. Here:

* :meth:`TokenText.raw` is the token's bytes (byte-level BPE: its piece through the GPT-2 byte
  alphabet; ``<0xNN>``: that byte; otherwise its decoded text), chat's ``bytes`` field;
* :meth:`TokenText.text` is the decoded text, or, for bytes that are not valid UTF-8 alone,
  ``bytes:\\xe6\\x97`` (what OpenAI's legacy completions return for such tokens);
* :meth:`TokenText.keys` gives every id of one map a distinct key: the first (most likely) to
  claim a text keeps it, a later id with the same text gets ``token_id:N``;
* ``as_ids`` (vLLM's ``return_tokens_as_token_ids``): every token is ``token_id:N``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@functools.lru_cache(maxsize=8)
def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer's pieces are bytes spelled in GPT-2's alphabet (Llama 3, SmolLM,
    Qwen, GPT-2...), read from its decoder's serialized form."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and b'"ByteLevel"' in decoder.__getstate__()


class TokenText:
    """Token strings of one tokenizer, for one response (``as_ids``: ``token_id:N`` keys)."""

    def __init__(self, tokenizer: Any, as_ids: bool = False) -> None:
        self.tokenizer = tokenizer
        self.as_ids = as_ids
        self._byte_level = _is_byte_level(tokenizer)
        self._special = set(getattr(tokenizer, "added_tokens_decoder", {}) or ())

    def raw(self, token_id: int) -> bytes:
        """The bytes this token adds to the text (special tokens: their text's UTF-8)."""
        if token_id not in self._special:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str):
                byte = _BYTE_PIECE.fullmatch(piece)
                if byte is not None:
                    return bytes([int(byte.group(1), 16)])
                decoder = _byte_decoder()
                if self._byte_level and all(c in decoder for c in piece):
                    return bytes(decoder[c] for c in piece)
        return self.tokenizer.decode([token_id]).encode()

    def text(self, token_id: int) -> str:
        """The token's text alone, or ``bytes:\\x..`` when its bytes are not UTF-8 alone."""
        if self.as_ids:
            return f"token_id:{token_id}"
        text = self.tokenizer.decode([token_id])
        if "\ufffd" in text:
            raw = self.raw(token_id)
            try:
                raw.decode()
            except UnicodeDecodeError:
                return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return text

    def keys(self, token_ids: Iterable[int]) -> dict[int, str]:
        """id -> a key no other id of ``token_ids`` has (earlier ids keep their text)."""
        keys: dict[int, str] = {}
        taken: set[str] = set()
        for token_id in token_ids:
            if token_id in keys:
                continue
            key = self.text(token_id)
            if key in taken:
                key = f"token_id:{token_id}"
            keys[token_id] = key
            taken.add(key)
        return keys
