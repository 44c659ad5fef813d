"""Token strings in logprobs, on real tokenizers (the tiny model's byte-level BPE; the default
model's, SmolLM2, marked slow): byte pieces of one character no longer share a key, the most
likely token keeps its own entry (``is_greedy`` as lm-evaluation-harness computes it), chat's
``bytes`` are the token's raw bytes, and ``token_id:N`` keys on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraplex.api.logprobs import chat_logprobs, completion_logprobs
from loraplex.api.token_text import TokenText
from loraplex.engine.request.outputs import TokenLogprob


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def is_greedy(logprobs) -> bool:
    """lm-evaluation-harness's check (openai_completions.py): each token is its map's argmax."""
    return all(
        max(top, key=top.get) == token
        for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True)
    )


def byte_pieces(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 1 and all(tokenizer.decode([i]) == "\ufffd" for i in ids)  # the bug's case
    return ids


def test_byte_pieces_of_one_character_get_distinct_keys(tokenizer) -> None:
    first, second = byte_pieces(tokenizer, "é")
    # The model's argmax is one byte piece; the sampled token is the other one.
    entry = TokenLogprob(token_id=second, logprob=-2.0, top=((first, -0.5), (second, -2.0)))
    logprobs, _ = completion_logprobs(tokenizer, [entry], 0)
    assert logprobs.tokens == ["bytes:\\xa9"]
    assert logprobs.top_logprobs == [{"bytes:\\xc3": -0.5, "bytes:\\xa9": -2.0}]
    assert not is_greedy(logprobs)  # the argmax's entry was overwritten before: True
    greedy = TokenLogprob(token_id=first, logprob=-0.5, top=((first, -0.5), (second, -2.0)))
    assert is_greedy(completion_logprobs(tokenizer, [greedy], 0)[0])


def test_offsets_count_decoded_characters(tokenizer) -> None:
    ids = tokenizer.encode("Paris é", add_special_tokens=False)
    entries = [TokenLogprob(i, -1.0, ()) for i in ids]
    logprobs, end = completion_logprobs(tokenizer, entries, 5)
    assert logprobs.text_offset[0] == 5
    assert end == 5 + sum(len(tokenizer.decode([i])) for i in ids)


def test_chat_bytes_are_the_raw_bytes(tokenizer) -> None:
    text = "日 🙂 é"
    ids = tokenizer.encode(text, add_special_tokens=False)
    content = chat_logprobs(tokenizer, [TokenLogprob(i, -1.0, ((i, -1.0),)) for i in ids]).content
    assert b"".join(bytes(c.bytes) for c in content) == text.encode()
    assert all(c.top_logprobs[0].bytes == c.bytes for c in content)
    pieces = [c.token for c in content if c.token.startswith("bytes:")]
    assert pieces and all(c.token != "\ufffd" for c in content)


def test_token_ids_as_keys(tokenizer) -> None:
    first, second = byte_pieces(tokenizer, "é")
    entry = TokenLogprob(token_id=second, logprob=-2.0, top=((first, -0.5), (second, -2.0)))
    logprobs, _ = completion_logprobs(tokenizer, [None, entry], 0, [first, second], as_ids=True)
    assert logprobs.tokens == [f"token_id:{first}", f"token_id:{second}"]
    assert logprobs.top_logprobs == [None, {f"token_id:{first}": -0.5, f"token_id:{second}": -2.0}]
    (chat,) = chat_logprobs(tokenizer, [entry], as_ids=True).content
    assert chat.token == f"token_id:{second}" and chat.bytes == [0xA9]


def test_special_tokens_and_repeats(tokenizer) -> None:
    names = TokenText(tokenizer)
    eos = tokenizer.eos_token_id
    assert names.raw(eos) == tokenizer.eos_token.encode()
    assert names.keys([eos, eos]) == {eos: tokenizer.eos_token}


@pytest.mark.slow
def test_default_model_multibyte_pieces() -> None:
    from loraplex.engine.model.default import ensure_default_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    text = "日本語 🙂 the"
    ids = tokenizer.encode(text, add_special_tokens=False)
    names = TokenText(tokenizer)
    assert b"".join(names.raw(i) for i in ids) == text.encode()
    broken = [i for i in ids if tokenizer.decode([i]) == "\ufffd"]
    assert len(broken) >= 2 and len(set(names.keys(broken).values())) == len(set(broken))
