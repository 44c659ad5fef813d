"""Stop strings matched incrementally: each new character costs O(number of stops), amortized.

One Knuth-Morris-Pratt automaton per stop string ``s`` keeps ``state`` = the length of the
longest prefix of ``s`` that is a suffix of the text fed so far. Feeding a character moves it
along the failure links; ``state == len(s)`` is a match ending at that character. The longest
suffix that could still grow into a stop (what a stream must hold back) is
``max(state)``, read in O(1). Rescanning the text for every token instead costs O(T·L) per
token (or O(L²) for the hold-back), which a client with long stop strings turns into seconds.
"""

from __future__ import annotations


def _failure(pattern: str) -> list[int]:
    """``fail[k]``: the longest proper border of ``pattern[:k]`` (KMP's prefix function)."""
    fail = [0] * (len(pattern) + 1)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i + 1] = k
    return fail


class StopMatcher:
    """Finds the earliest-starting stop string (the longer one at equal starts) in a text that
    arrives in pieces; positions are offsets into the whole text fed so far."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._fail = [_failure(s) for s in stops]
        self._state = [0] * len(stops)
        self._fed = 0

    def feed(self, delta: str) -> tuple[int, str] | None:
        """Feed ``delta``; return ``(start, stop)`` of the earliest match ending inside it."""
        best: tuple[int, str] | None = None
        for n, (stop, fail) in enumerate(zip(self._stops, self._fail, strict=True)):
            k = self._state[n]
            for offset, char in enumerate(delta):
                if k == len(stop):  # a full match restarts from its border
                    k = fail[k]
                while k and char != stop[k]:
                    k = fail[k]
                if char == stop[k]:
                    k += 1
                if k == len(stop):
                    start = self._fed + offset + 1 - len(stop)
                    if best is None or (start, -len(stop)) < (best[0], -len(best[1])):
                        best = (start, stop)
                    break  # later matches of this stop start later
            self._state[n] = k
        self._fed += len(delta)
        return best

    def partial(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop."""
        return max((k for k, s in zip(self._state, self._stops, strict=True) if k < len(s)),
                   default=0)  # fmt: skip
