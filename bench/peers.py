"""The in-process peers, on exactly the requests the server gets (prompts as token ids, greedy,
every request ``max_tokens`` new tokens):

- HF ``generate`` in static batches of ``batch`` requests in order (left-padded; a batch runs
  until its longest request is done, and only each request's own tokens count as output);
- PEFT ``generate(adapter_names=...)``: the same static batches, each row with its adapter;
- PEFT one request at a time: ``set_adapter`` then ``generate`` on a batch of one;
- the bare forward row (r): ``steps`` one-token decode forwards of a ``batch``-row batch over its
  KV cache (prefill untimed): not a system, the limit of base-only serving at that batch size.

Token times come from a stopping criterion that stamps every decode step, so TTFT and ITL are
measured like the server's (TTFT from the start of the ``generate`` call serving the request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import common
from stats import RequestRecord, RunStats
from workload import Request

Tick = Callable[[int], None]
PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in adapter_names


def padded_batch(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), both ``[batch, longest]``, left-padded with ``pad_id``."""
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


def _step_clock(times: list[float]) -> Any:
    """A stopping criterion that never stops and stamps each generated token's step."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StepClock(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StepClock()])


def generate_batch(
    model: Any, tokenizer: Any, batch: Sequence[Request], **generate_kwargs: Any
) -> list[RequestRecord]:
    """One greedy ``generate`` over ``batch`` as a static batch; a record per request."""
    import torch

    sent = time.perf_counter()
    ids, mask = padded_batch([r.prompt for r in batch], tokenizer.pad_token_id)
    longest = max(r.max_tokens for r in batch)
    times: list[float] = []
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest,
            do_sample=False,
            stopping_criteria=_step_clock(times),
            **generate_kwargs,
        )
    new = out[:, ids.shape[1] :]
    if new.shape[1] != longest or len(times) != longest:
        raise RuntimeError(f"generate made {new.shape[1]} tokens per row, expected {longest}")
    records = []
    for row, request in enumerate(batch):
        tokens = new[row, : request.max_tokens]
        text = tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        times_of = times[: request.max_tokens]
        records.append(
            RequestRecord(request.index, sent, times_of, request.max_tokens, text, request.adapter)
        )
    return records


def static_batches(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    batch: int,
    system: str,
    tick: Tick,
    with_adapters: bool = False,
) -> RunStats:
    """HF (or, ``with_adapters``, PEFT mixed-batch) ``generate`` over consecutive batches."""
    start, records = time.perf_counter(), []
    for first in range(0, len(requests), batch):
        chunk = requests[first : first + batch]
        kwargs = {"adapter_names": [r.adapter or PEFT_BASE for r in chunk]} if with_adapters else {}
        records += generate_batch(model, tokenizer, chunk, **kwargs)
        tick(len(chunk))
    return RunStats(system, time.perf_counter() - start, records)


def one_at_a_time(
    peft_model: Any, tokenizer: Any, requests: Sequence[Request], system: str, tick: Tick
) -> RunStats:
    """PEFT serving one request at a time: ``set_adapter(name)`` (or the adapters disabled for
    a base request), then ``generate`` on a batch of one."""
    start, records = time.perf_counter(), []
    for request in requests:
        if request.adapter is None:
            with peft_model.disable_adapter():
                records += generate_batch(peft_model, tokenizer, [request])
        else:
            peft_model.set_adapter(request.adapter)
            records += generate_batch(peft_model, tokenizer, [request])
        tick(1)
    return RunStats(system, time.perf_counter() - start, records)


def bare_forward(
    model: Any, tokenizer: Any, requests: Sequence[Request], batch: int, steps: int, tick: Tick
) -> RunStats:
    """(r): ``steps`` decode forwards of the first ``batch`` prompts; ``batch * steps`` tokens.
    Every row's token times are the step ends, so its ITL is the bare step time (and it has no
    TTFT: its prefill is not timed)."""
    chunk = requests[:batch]
    ids, mask = padded_batch([r.prompt for r in chunk], tokenizer.pad_token_id)
    ends: list[float] = []
    seconds = common.timed_decode_steps(model, ids, mask, steps, ends)
    tick(len(chunk))
    records = [RequestRecord(r.index, math.nan, ends[1:], steps) for r in chunk]
    return RunStats("(r) bare HF decode forward", seconds, records)


def load_peft(model_dir: Path, store: Path, names: Sequence[str], dtype: str) -> tuple[Any, Any]:
    """(PeftModel with every adapter of ``names`` loaded from ``store``, tokenizer)."""
    from peft import PeftModel

    base, tokenizer = common.load_hf_model(model_dir, dtype)
    model = PeftModel.from_pretrained(base, store / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(store / name, adapter_name=name)
    model.eval()
    return model, tokenizer
