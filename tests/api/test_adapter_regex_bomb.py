"""Regex bombs in uploaded adapter configs, through a live server (issue 10, item 1).

``"target_modules": "mode(.|.)*Q"`` froze the whole process for 12 s with Python's backtracking
``re`` (``(.|.|.)*Q`` never ends). The patterns now run on RE2: the upload is answered at once,
refused when the bomb leaves the weights untargeted and accepted when it only fails to match
(as PEFT would), while ``/health`` and a concurrent completion go on undisturbed.
"""

from __future__ import annotations

import threading
import time

import pytest
from adapter_files import AdapterFiles, Env, assert_error, complete, env_fixture, get, text, upload

env = env_fixture("regex-bomb")

BOMBS = ["mode(.|.)*Q", "(.|.|.)*Q"]


class HealthWatch:
    """Polls ``/health`` (and runs one completion) in the background: the longest time between
    two answers, every status seen and the completion's text.

    The server runs in this process, so while something holds the GIL the poller cannot even
    send: a freeze shows as a gap between answers, not as one slow answer.
    """

    def __init__(self, env: Env, model: str) -> None:
        self.env, self.model = env, model
        self.longest_gap, self.statuses, self.completion = 0.0, set(), ""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll), threading.Thread(target=self._run)]

    def _poll(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            self.statuses.add(get(self.env.url, "/health").status_code)
            now = time.perf_counter()
            self.longest_gap, last = max(self.longest_gap, now - last), now
            time.sleep(0.01)

    def _run(self) -> None:
        self.completion = text(complete(self.env.url, self.model))

    def __enter__(self) -> HealthWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


@pytest.mark.parametrize("bomb", BOMBS)
def test_bomb_target_is_refused_at_once(env: Env, tiny_adapter_name: str, bomb: str) -> None:
    expected = text(complete(env.url, tiny_adapter_name))
    before = env.state()
    with HealthWatch(env, tiny_adapter_name) as watch:
        start = time.perf_counter()
        response = upload(env.url, "bomb", env.files.with_config(target_modules=bomb))
        elapsed = time.perf_counter() - start
    assert_error(response, 400, "is not in target_modules")
    assert elapsed < 5 and watch.longest_gap < 1 and watch.statuses == {200}, (
        elapsed,
        watch.longest_gap,
    )
    assert watch.completion == expected  # the concurrent client got its normal answer
    assert env.state() == before


@pytest.mark.parametrize("field", ["exclude_modules", "rank_pattern", "alpha_pattern"])
def test_bomb_that_matches_nothing_changes_nothing(
    env: Env, tiny_adapter_name: str, field: str
) -> None:
    """An exclusion or pattern key that matches no module is accepted, as PEFT accepts it, and
    the adapter serves exactly what the same adapter without it serves."""
    bomb = BOMBS[1]
    files: AdapterFiles = env.files.with_config(
        **{field: bomb if field.endswith("_modules") else {bomb: 2}}
    )
    with HealthWatch(env, tiny_adapter_name) as watch:
        start = time.perf_counter()
        response = upload(env.url, f"bomb-{field}", files)
        elapsed = time.perf_counter() - start
    assert response.status_code == 201, response.text
    assert elapsed < 5 and watch.longest_gap < 1 and watch.statuses == {200}, (
        elapsed,
        watch.longest_gap,
    )
    assert text(complete(env.url, f"bomb-{field}")) == text(complete(env.url, tiny_adapter_name))


def test_lookaround_is_refused_with_a_reason(env: Env) -> None:
    files = env.files.with_config(target_modules=r"(?!.*vision).*(q|v)_proj")
    assert_error(upload(env.url, "lookahead", files), 400, "linear-time engine")
