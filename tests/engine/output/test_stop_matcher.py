"""The incremental stop matcher agrees with rescanning the whole text, on random pieces."""

from __future__ import annotations

import random

from loraplex.engine.output.stop_matcher import StopMatcher


def _brute(text: str, start: int, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The rule written plainly: earliest match ending at or after ``start``; longer first."""
    found = []
    for stop in stops:
        i = text.find(stop, max(0, start - len(stop) + 1))
        if i >= 0:
            found.append((i, stop))
    return min(found, key=lambda m: (m[0], -len(m[1])), default=None)


def _brute_partial(text: str, stops: tuple[str, ...]) -> int:
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def test_matches_and_hold_back_agree_with_a_rescan() -> None:
    rng = random.Random(0)
    for _ in range(400):
        alphabet = "ab" if rng.random() < 0.5 else "abc"
        stops = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(1, 4))
        )
        matcher, text = StopMatcher(stops), ""
        for _ in range(12):
            delta = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            expected = _brute(text + delta, len(text), stops)
            assert matcher.feed(delta) == expected, (stops, text, delta)
            text += delta
            if expected is not None:
                break
            assert matcher.partial() == _brute_partial(text, stops)


def test_overlapping_and_repeated_patterns() -> None:
    matcher = StopMatcher(("aab", "ab"))
    assert matcher.feed("aa") is None and matcher.partial() == 2
    assert matcher.feed("ab") == (1, "aab")  # "aab" at 1 starts before "ab" at 2
    assert StopMatcher(("abab",)).feed("abaabab") == (3, "abab")
    assert StopMatcher(()).feed("anything") is None
