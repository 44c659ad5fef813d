"""Helpers for the ``/v1/completions`` end-to-end tests (``test_completions_*.py``): the prompt,
greedy arguments for the ``openai`` client, and one sample read from ``/metrics``."""

from __future__ import annotations

import httpx

PROMPT = "The capital of France is"
# ignore_eos: a random model may emit EOS at any step; with it every completion has exactly
# max_tokens tokens, so texts and usage are comparable.
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}


def metric(url: str, name: str, labels: str = "", key: str | None = None) -> float:
    """One sample's value from /metrics (0 if absent); ``labels`` as in the text format;
    ``key``: a ``metrics`` (or admin) key, to read tenants' labels plain."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for line in httpx.get(f"{url}/metrics", headers=headers).text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0
