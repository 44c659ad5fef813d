"""Logprobs of chosen tokens and their most likely alternatives, brought back with the step's
sampled tokens in one device->host copy.

Values are the model's own distribution, ``log_softmax(logits)`` of the raw logits, whatever a
request's penalties and temperature (as vLLM reports them by default).
"""

from __future__ import annotations

import torch

from loraplex.engine.request.outputs import TokenLogprob
from loraplex.engine.sample.sampler import NON_FINITE, on_device

LOGPROB_FLOOR = -9999.0  # the least logprob reported (a token a grammar rules out)


def logprob_table(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """[W, 1 + 2k] float64 on the device: row i holds ``log_softmax(logits[i])`` at
    ``tokens[i]``, then its k largest values, then their ids (exact in float64), so one copy
    brings everything back."""
    logp = logits.float().log_softmax(dim=-1)
    chosen = logp.gather(1, tokens.view(-1, 1))
    values, ids = logp.topk(k, dim=-1)
    # A grammar's masked tokens are -inf: reported as LOGPROB_FLOOR (vLLM's), as JSON has no inf.
    values = torch.cat([chosen, values], dim=1).clamp_min(LOGPROB_FLOOR)
    return torch.cat([values.double(), ids.double()], dim=1)


def _entries(table: list[float], tokens: list[int], top_k: list[int], k: int) -> list:
    """TokenLogprob rows from a flattened ``logprob_table`` of width ``1 + 2k``."""
    width = 1 + 2 * k
    found = []
    for i, (token, want) in enumerate(zip(tokens, top_k, strict=True)):
        row = table[i * width : (i + 1) * width]
        ids = [int(t) for t in row[1 + k : 1 + k + want]]
        found.append(TokenLogprob(token, row[0], tuple(zip(ids, row[1 : 1 + want], strict=True))))
    return found


def token_logprobs(logits: torch.Tensor, tokens: list[int], top_k: list[int]) -> list[TokenLogprob]:
    """Row i: ``log_softmax(logits[i])`` at ``tokens[i]`` and its ``top_k[i]`` largest entries.

    ``logits`` [N, V] are the raw model logits of the rows that asked for logprobs, so the
    values are the model's own distribution, whatever the request's penalties and temperature.
    One device->host copy for all rows.
    """
    k = max(top_k, default=0)
    chosen = on_device(tokens, logits.device)
    return _entries(logprob_table(logits, chosen, k).view(-1).tolist(), tokens, top_k, k)


def read_sampled(
    tokens: torch.Tensor,
    logits: torch.Tensor,
    top_k: list[int | None],
    finite: torch.Tensor | None = None,
) -> tuple[list[int], list[TokenLogprob | None]]:
    """The step's one device->host copy: the sampled ``tokens`` [N] (``NON_FINITE`` where
    ``finite`` [N] is False) and, for each row whose ``top_k[i]`` is not None, its logprob
    entry (``token_logprobs``) computed on the device."""
    wanted = [i for i, k in enumerate(top_k) if k is not None]
    chosen = tokens
    if finite is not None:
        chosen = torch.where(finite, tokens, NON_FINITE)
    if not wanted:
        return chosen.tolist(), [None] * len(top_k)
    want = [top_k[i] or 0 for i in wanted]
    k = max(want)
    rows = on_device(wanted, logits.device)
    table = logprob_table(logits[rows], tokens[rows], k).view(-1)
    host = torch.cat([chosen.double(), table]).tolist()
    ids = [int(t) for t in host[: len(top_k)]]
    found: list[TokenLogprob | None] = [None] * len(top_k)
    entries = _entries(host[len(top_k) :], [ids[i] for i in wanted], want, k)
    for i, entry in zip(wanted, entries, strict=True):
        found[i] = entry
    return ids, found
