"""IncrementalDetokenizer: UTF-8 safety, equality with a full decode, and stop strings.

Uses a tiny byte-level BPE trained here, with a vocabulary small enough that CJK characters
and emoji stay split across several byte tokens, so half-characters really occur.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from loraplex.engine.output.detokenizer import IncrementalDetokenizer
from loraplex.engine.request.params import SamplingParams

CORPUS = [
    "héllo wörld 日本語 🎉",
    "hello world, the quick brown fox jumps over the lazy dog",
    "naïve café, stop here and STOP now",
]
UNICODE_TEXT = "héllo wörld 日本語 🎉 naïve café"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def run(
    tokenizer: Any, ids: list[int], params: SamplingParams | None = None, prompt: str = ""
) -> tuple[list[str], bool, IncrementalDetokenizer]:
    """Feed ``ids`` until a stop string hits; returns (deltas incl. flush, hit, detokenizer)."""
    detok = IncrementalDetokenizer(tokenizer, encode(tokenizer, prompt), params or SamplingParams())
    deltas: list[str] = []
    for token_id in ids:
        delta, hit = detok.step(token_id)
        deltas.append(delta)
        if hit:
            return deltas, True, detok
    deltas.append(detok.flush())
    return deltas, False, detok


def test_tokenizer_really_splits_characters(tokenizer: Any) -> None:
    pieces = [decode(tokenizer, [i]) for i in encode(tokenizer, UNICODE_TEXT)]
    assert any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("prompt", ["", "Say: 日本"])
def test_deltas_concatenate_to_full_decode_without_broken_utf8(tokenizer: Any, prompt: str) -> None:
    ids = encode(tokenizer, UNICODE_TEXT)
    deltas, hit, detok = run(tokenizer, ids, prompt=prompt)
    assert not hit
    assert "".join(deltas) == decode(tokenizer, ids) == UNICODE_TEXT == detok.text
    assert not any("\ufffd" in d for d in deltas)
    assert deltas[-1] == ""  # nothing left to flush for valid UTF-8 without stop strings


def test_special_tokens_are_skipped(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    ids = [*encode(tokenizer, "hello "), eos, *encode(tokenizer, "wörld")]
    deltas, _, _ = run(tokenizer, ids)
    assert "".join(deltas) == decode(tokenizer, ids) == "hello wörld"


def test_decodes_only_a_small_window_per_step(tokenizer: Any) -> None:
    """Each step decodes a few tokens, not the whole output (which would be O(n^2))."""
    lengths: list[int] = []

    class Spy:
        def encode(self, text: str, **kwargs: Any) -> list[int]:
            return tokenizer.encode(text, **kwargs)

        def decode(self, ids: list[int], **kwargs: Any) -> str:
            lengths.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    ids = encode(tokenizer, " ".join(CORPUS * 5))
    deltas, _, _ = run(Spy(), ids)
    assert "".join(deltas) == decode(tokenizer, ids)
    assert len(ids) > 200 and max(lengths) <= 12


def test_invalid_bytes_are_released_eventually(tokenizer: Any) -> None:
    # "Ω" is not in the corpus, so it is two byte tokens; the second is a lone continuation byte.
    continuation = encode(tokenizer, "Ω")[1]
    assert decode(tokenizer, [continuation]) == "\ufffd"
    ids = encode(tokenizer, "ok ") + [continuation] * 12
    deltas, _, detok = run(tokenizer, ids)
    assert "".join(deltas[:-1]).count("\ufffd") > 0  # not held back forever while streaming
    assert "".join(deltas) == detok.text == decode(tokenizer, ids)


def test_flush_releases_incomplete_tail(tokenizer: Any) -> None:
    ids = encode(tokenizer, "hi 日")[:-1]  # drop the character's last byte token
    deltas, _, detok = run(tokenizer, ids)
    assert "\ufffd" not in "".join(deltas[:-1])
    assert deltas[-1].endswith("\ufffd")
    assert "".join(deltas) == detok.text == decode(tokenizer, ids)


def assert_never_leaks(deltas: list[str], text: str) -> None:
    """Everything streamed so far is a prefix of the final text: nothing is taken back."""
    streamed = ""
    for delta in deltas:
        streamed += delta
        assert text.startswith(streamed)
    assert streamed == text


def test_stop_string_truncates(tokenizer: Any) -> None:
    ids = encode(tokenizer, "hello world, the quick brown fox jumps")
    deltas, hit, detok = run(tokenizer, ids, SamplingParams(stop=("quick",)))
    assert hit
    assert detok.text == "hello world, the "
    assert_never_leaks(deltas, detok.text)
    assert detok.step(ids[-1]) == ("", True)  # tokens after a stop are ignored
    assert detok.flush() == ""


def test_stop_string_split_across_tokens_is_never_partially_emitted(tokenizer: Any) -> None:
    stop = "日本語"
    ids = encode(tokenizer, "héllo wörld 日本語 🎉")
    assert not any(stop in decode(tokenizer, [i]) for i in ids)  # really spans several tokens
    deltas, hit, detok = run(tokenizer, ids, SamplingParams(stop=(stop,)))
    assert hit
    assert detok.text == "héllo wörld "
    assert_never_leaks(deltas, detok.text)
    assert not any("日" in d or "\ufffd" in d for d in deltas)


def test_include_stop_str_in_output(tokenizer: Any) -> None:
    ids = encode(tokenizer, "hello world, the quick brown fox")
    params = SamplingParams(stop=("quick b",), include_stop_str_in_output=True)
    deltas, hit, detok = run(tokenizer, ids, params)
    assert hit
    assert detok.text == "hello world, the quick b"
    assert_never_leaks(deltas, detok.text)


def test_stop_inside_one_token_cuts_mid_token(tokenizer: Any) -> None:
    ids = encode(tokenizer, "hello world")
    deltas, hit, detok = run(tokenizer, ids, SamplingParams(stop=("ll",)))
    assert hit and detok.text == "he"
    assert_never_leaks(deltas, detok.text)


def test_earliest_of_several_stops_wins(tokenizer: Any) -> None:
    ids = encode(tokenizer, "the quick brown fox jumps over")
    deltas, hit, detok = run(tokenizer, ids, SamplingParams(stop=("jumps", "brown", "zzz")))
    assert hit and detok.text == "the quick "
    assert_never_leaks(deltas, detok.text)


def test_false_stop_prefix_is_held_then_released(tokenizer: Any) -> None:
    """A possible stop prefix ("qui" of "quiet") is held, then streamed once ruled out."""
    ids = encode(tokenizer, "the quick brown fox")
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=("quiet", "fox!")))
    streamed = ""
    for token_id in ids:
        delta, hit = detok.step(token_id)
        assert not hit
        streamed += delta
        assert not streamed.endswith(("q", "qu", "qui", "quie"))
    # "fox" may still become "fox!", so it only comes out with flush().
    assert streamed == "the quick brown "
    assert detok.flush() == "fox"
    assert detok.text == "the quick brown fox"


@pytest.mark.slow
def test_real_default_model_tokenizer() -> None:
    path = Path.home() / ".cache" / "loraplex" / "models" / "SmolLM2-135M-Instruct"
    if not (path / "tokenizer_config.json").is_file():
        pytest.skip("default model not in the cache")
    tok = AutoTokenizer.from_pretrained(path)
    ids = encode(tok, "Hello there! " + UNICODE_TEXT + " done.")
    deltas, hit, _ = run(tok, ids, prompt="<|im_start|>assistant\n")
    assert not hit
    assert "".join(deltas) == decode(tok, ids)
    assert not any("\ufffd" in d for d in deltas)
