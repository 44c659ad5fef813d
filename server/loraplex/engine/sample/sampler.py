"""Turns one step's logits into next tokens, one row per sequence, honouring each request's params.

Pipeline for a row with logits ``x`` (shape ``[V]``), in float32:

1. Penalties (rows with any): ``repetition_penalty`` ``r`` for every token seen in prompt or
   output: ``x = x / r if x > 0 else x * r`` (vLLM); then, with ``c`` the token's count in the
   output so far, ``x -= frequency_penalty * c + presence_penalty * (c > 0)`` (OpenAI).
2. ``temperature == 0``: ``argmax(x)``. Otherwise ``x /= temperature``.
3. ``top_k > 0``: keep the ``k`` largest logits. ``top_p < 1``: of what remains, keep the
   smallest descending-probability prefix whose mass reaches ``top_p`` (always >= 1 token).
4. Draw from ``softmax(x)`` by the exponential race ``argmax(p / E)``, ``E ~ Exp(1)`` i.i.d.,
   which samples index ``i`` with probability ``p_i``. A seeded request's noise comes from its
   own ``torch.Generator`` on that generator's device, so a seed gives the same tokens whatever
   device the logits live on and whatever else shares the batch.
"""

from __future__ import annotations

import torch

from loraplex.engine.request.params import SamplingParams

# Floor for the exponential noise: a zero would turn p=0 into 0/0=nan, and argmax picks nan.
_MIN_NOISE = 1e-20
# What ``logprobs.read_sampled`` returns for a row whose logits were not finite (ids are >= 0).
NON_FINITE = -1


def on_device(values: list, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``values`` as a tensor on ``device`` without waiting for it: on CUDA through pinned
    memory and a non-blocking copy (``torch.tensor(values, device=cuda)`` would synchronize
    the stream, as does indexing a CUDA tensor with a Python list)."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def apply_penalties(
    logits: torch.Tensor,
    params: list[SamplingParams],
    prompt_ids: list[list[int]],
    output_ids: list[list[int]],
) -> torch.Tensor:
    """Return ``logits`` ([N, V] float32) with each row's penalties applied (see module doc).

    Vectorized: token counts for all rows are scattered into one [N, V] tensor, so the only
    per-row Python work is flattening the id lists.
    """
    n, vocab = logits.shape
    dev = logits.device
    out_rows = [i for i, ids in enumerate(output_ids) for _ in ids]
    out_toks = [t for ids in output_ids for t in ids]
    counts = torch.zeros(n, vocab, dtype=torch.float32, device=dev)
    if out_toks:
        counts.index_put_(
            (on_device(out_rows, dev), on_device(out_toks, dev)),
            torch.ones(len(out_toks), device=dev),
            accumulate=True,
        )
    seen_out = counts > 0

    def column(values: list[float]) -> torch.Tensor:
        return on_device(values, dev, torch.float32).unsqueeze(1)

    rep = column([p.repetition_penalty for p in params])
    seen = seen_out.clone()
    prompt_rows = [i for i, ids in enumerate(prompt_ids) for _ in ids]
    prompt_toks = [t for ids in prompt_ids for t in ids]
    if prompt_toks:
        seen[on_device(prompt_rows, dev), on_device(prompt_toks, dev)] = True
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)

    freq = column([p.frequency_penalty for p in params])
    pres = column([p.presence_penalty for p in params])
    return logits - freq * counts - pres * seen_out.float()


def filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Return probabilities [N, V] after top-k then top-p filtering of ``logits`` [N, V].

    ``top_k`` [N] (int, <= 0 off) and ``top_p`` [N] (float, 1 off). One descending sort serves
    both filters for the whole batch; the result is scattered back to vocabulary order.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    ranks = torch.arange(vocab, device=logits.device)
    sorted_logits = sorted_logits.masked_fill(ranks >= k.unsqueeze(1), float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    # Drop a token once the mass strictly before it already reaches top_p; rank 0 always stays.
    # top_p == 1 rows get an infinite threshold so float rounding in cumsum never trims them.
    threshold = torch.where(top_p < 1.0, top_p, float("inf")).unsqueeze(1)
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before >= threshold, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, probs)


class Sampler:
    """Picks one token per row of a step's logits; stateless, so one instance serves the engine."""

    def sample(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        prompt_ids: list[list[int]],
        output_ids: list[list[int]],
        generators: list[torch.Generator | None],
    ) -> torch.Tensor:
        """Sample from ``logits`` [N, V] (row i belongs to ``params[i]``): the N token ids [N]
        (int64), left on the logits' device (``read_sampled`` brings them back): nothing waits
        for the device (per-request values go up as small tensors; nothing comes back)."""
        n = logits.shape[0]
        if n == 0:
            return torch.zeros(0, dtype=torch.int64, device=logits.device)
        # Fast path for plain greedy batches: one kernel, no per-row work.
        if all(p.greedy and not p.has_penalties for p in params):
            return logits.argmax(dim=-1)

        dev = logits.device
        x = logits.to(dtype=torch.float32, copy=True)
        pen = [i for i, p in enumerate(params) if p.has_penalties]
        if pen:
            pen_rows = on_device(pen, dev)
            x[pen_rows] = apply_penalties(
                x[pen_rows],
                [params[i] for i in pen],
                [prompt_ids[i] for i in pen],
                [output_ids[i] for i in pen],
            )

        tokens = x.argmax(dim=-1)  # final for greedy rows; sampled rows are overwritten below
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if rows:
            sp = [params[i] for i in rows]
            sampled_rows = on_device(rows, dev)
            temps = on_device([p.temperature for p in sp], dev, torch.float32)
            xs = x[sampled_rows] / temps.unsqueeze(1)
            if any(p.top_k > 0 or p.top_p < 1.0 for p in sp):
                top_k = on_device([p.top_k for p in sp], dev)
                top_p = on_device([p.top_p for p in sp], dev, torch.float32)
                probs = filter_top_k_top_p(xs, top_k, top_p)
            else:
                probs = xs.softmax(dim=-1)
            noise = torch.empty_like(probs).exponential_()
            for j, i in enumerate(rows):
                g = generators[i]
                if g is not None:
                    seeded = torch.empty(probs.shape[-1], device=g.device)
                    noise[j] = seeded.exponential_(generator=g).to(dev)
            tokens[sampled_rows] = (probs / noise.clamp_min(_MIN_NOISE)).argmax(dim=-1)
        return tokens


@torch.inference_mode()  # the logits are inference tensors, updated in place
def guard_non_finite(logits: torch.Tensor) -> torch.Tensor:
    """finite [N] bool: which rows of ``logits`` [N, V] hold no inf/NaN (one reduction: a
    row's sum is non-finite if any entry is). Non-finite rows are zeroed in place, so sampling
    and logprobs stay harmless for them; the engine fails their requests (``NON_FINITE``)."""
    finite = torch.isfinite(logits.sum(dim=-1))
    if logits.is_cuda:  # no host sync on the device: the flags come back with the tokens
        logits.masked_fill_(~finite[:, None], 0.0)
    elif not bool(finite.all()):
        logits[~finite] = 0.0
    return finite
