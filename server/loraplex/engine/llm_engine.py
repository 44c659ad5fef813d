"""The synchronous engine: ``step()`` = schedule -> make adapters resident -> forward -> sample."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.config import Config
from loraplex.engine.adapters import AdapterSpec, EngineAdapters
from loraplex.engine.batch import build_batch
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.default_model import DEFAULT_MODEL_NAME, cache_root, ensure_default_model
from loraplex.engine.detokenizer import IncrementalDetokenizer
from loraplex.engine.dummy_weights import builtin_dummy_folder
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.outputs import RequestOutput, TokenLogprob
from loraplex.engine.sampler import Sampler, token_logprobs
from loraplex.engine.sampling_params import ParameterError, SamplingParams
from loraplex.engine.scheduler import Scheduler
from loraplex.engine.sequence import Sequence

log = logging.getLogger(__name__)


@dataclass
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    sent_prompt_logprobs: bool = False  # they go out once, with the first output


class LLMEngine:
    """Owns the model runner, scheduler, adapter registry and slot cache; single-threaded."""

    def __init__(self, config: Config, on_adapter_loaded: Callable[[], None] = lambda: None):
        self.config = config
        dummy = config.model.load_format == "dummy"
        default = builtin_dummy_folder if dummy else ensure_default_model
        path = config.model.model or str(default())
        self.model_name = config.model.served_model_name or (
            DEFAULT_MODEL_NAME if config.model.model is None and not dummy else Path(path).name
        )
        self.runner = ModelRunner(path, config.model, config.cache, config.lora)
        self.tokenizer = self.runner.tokenizer
        limit = self.runner.max_position_embeddings or config.model.max_model_len
        layout = self.runner.layout
        self.max_model_len = min(
            config.model.max_model_len, limit, layout.num_blocks * layout.block_size
        )
        self.block_manager = BlockManager(
            layout.num_blocks, layout.block_size, config.cache.enable_prefix_caching
        )
        self._adapter_loaded = threading.Event()

        def adapter_loaded() -> None:
            self._adapter_loaded.set()
            on_adapter_loaded()

        self.adapters = EngineAdapters(
            config.lora, self.runner, Path(path).name, cache_root(), adapter_loaded
        )
        self.registry = self.adapters.registry
        self.scheduler = Scheduler(
            config.scheduler,
            self.block_manager,
            config.lora.max_loras,
            self.max_model_len,
            is_ready=self.adapters.is_ready,
            pinned=lambda: self.adapters.slots.pinned,
        )
        self.sampler = Sampler()
        self.eos_token_ids = self.runner.eos_token_ids()
        self.requests: dict[str, _Request] = {}
        # Requests whose adapter failed to load; the async engine reports them to their clients.
        self.failed: list[tuple[str, Exception]] = []
        self.last_step_idle = True
        self._new_requests = False

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Refuse what can never run, before it is queued."""
        if not prompt_ids:
            raise ParameterError("prompt", "the prompt is empty")
        vocab = self.runner.model.config.get_text_config().vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ParameterError("prompt", f"token ids must be in [0, {vocab})")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ParameterError(
                "max_tokens" if len(prompt_ids) < self.max_model_len else "prompt",
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's context length of {self.max_model_len} tokens",
            )

    def add_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: AdapterSpec,
        cache_salt: str | None = None,
    ) -> None:
        """Queue a request; ``adapter`` is a name, a weighted mix of names, or None (base).
        ``cache_salt``: only requests with the same salt share prefix-cache blocks."""
        self.check_request(prompt_ids, params)
        key, merged = self.adapters.resolve(adapter)
        if key is not None:
            self.registry.host.acquire(key)  # its weights stay in host memory until it ends
        seq = Sequence(
            request_id, list(prompt_ids), params, adapter=key, merged=merged, cache_salt=cache_salt
        )
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.runner.device).manual_seed(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params)
        self.requests[request_id] = _Request(seq, detok, generator)
        self.scheduler.add(seq)
        self._new_requests = True

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.requests.get(request_id)
        if request is None:
            return None
        self.scheduler.abort(request_id)
        self._release(request)
        return self._output(request, "", (), "abort")

    def _release(self, request: _Request) -> None:
        del self.requests[request.seq.request_id]
        if request.seq.adapter is not None:
            self.registry.host.release(request.seq.adapter)

    def _check_waiting(self) -> None:
        """Prefetch the adapters of queued requests (the first ``max_cpu_loras`` distinct ones,
        so prefetching never thrashes host memory), and finish requests whose adapter could not
        be loaded (deleted or replaced meanwhile)."""
        wanted: set[str] = set()
        for seq in list(self.scheduler.waiting):
            if seq.adapter is None or seq.merged:
                continue
            error = self.registry.failure(seq.adapter)
            if error is not None:
                self.scheduler.finish(seq, "abort")
                self._release(self.requests[seq.request_id])
                self.failed.append((seq.request_id, error))
            elif len(wanted) < self.config.lora.max_cpu_loras:
                wanted.add(seq.adapter)
                self.registry.prefetch(seq.adapter)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching; returns the outputs this step produced."""
        if self.last_step_idle and self.scheduler.num_waiting and not self._new_requests:
            # Everything queued waits for adapter loads: wait for one rather than spin.
            self._adapter_loaded.wait(0.05)
        self._adapter_loaded.clear()
        self._new_requests = False
        self._check_waiting()
        out = self.scheduler.schedule()
        self.last_step_idle = out.is_empty
        if out.is_empty:
            return []
        slot_of = self.adapters.activate(
            {s.seq.adapter for s in out.scheduled if s.seq.adapter and not s.seq.merged}
        )
        batch = build_batch(
            out.scheduled,
            slot_of,
            self.runner.layout.block_size,
            self.config.lora.max_loras,
            self.runner.device,
        )
        logits = self.runner.forward(batch)
        self.scheduler.after_step(out)
        num_sampled = len(batch.sample_seqs)
        if batch.prompt_targets:
            self._score_prompts(logits[num_sampled:], batch.prompt_targets)
        logits = logits[:num_sampled]
        requests = [self.requests[s.request_id] for s in batch.sample_seqs]
        tokens = self.sampler(
            logits,
            [r.seq.params for r in requests],
            [r.seq.prompt_token_ids for r in requests],
            [r.seq.output_token_ids for r in requests],
            [r.generator for r in requests],
        )
        logprobs: list[TokenLogprob | None] = [None] * len(requests)
        wanted = [i for i, r in enumerate(requests) if r.seq.params.logprobs is not None]
        if wanted:
            found = token_logprobs(
                logits[wanted],
                [tokens[i] for i in wanted],
                [requests[i].seq.params.logprobs or 0 for i in wanted],
            )
            for i, entry in zip(wanted, found, strict=True):
                logprobs[i] = entry
        return [
            self._advance(r, t, lp) for r, t, lp in zip(requests, tokens, logprobs, strict=True)
        ]

    @staticmethod
    def _score_prompts(logits: torch.Tensor, targets: list[tuple[Sequence, int]]) -> None:
        """Append each prompt token's logprob (row m of ``logits`` scores ``targets[m]``)."""
        tokens = [token for _, token in targets]
        top_k = [seq.params.prompt_logprobs or 0 for seq, _ in targets]
        for (seq, _), entry in zip(targets, token_logprobs(logits, tokens, top_k), strict=True):
            seq.prompt_logprobs.append(entry)

    def _advance(
        self, request: _Request, token: int, logprob: TokenLogprob | None = None
    ) -> RequestOutput:
        """Append one sampled token, detokenize it and decide whether the request is done."""
        seq, params = request.seq, request.seq.params
        seq.append_token(token)
        reason, text = None, ""
        if token in params.stop_token_ids or (
            token in self.eos_token_ids and not params.ignore_eos
        ):
            reason = "stop"
        else:
            text, hit_stop = request.detokenizer.step(token)
            if hit_stop:
                reason = "stop"
            elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
                reason = "length"
        if reason is not None:
            if reason != "stop" or not request.detokenizer.stopped:
                text += request.detokenizer.flush()
            self.scheduler.finish(seq, reason)
            self._release(request)
        return self._output(request, text, (token,), reason, logprob)

    @staticmethod
    def _output(
        request: _Request,
        text: str,
        tokens: tuple[int, ...],
        reason: str | None,
        logprob: TokenLogprob | None = None,
    ) -> RequestOutput:
        seq = request.seq
        prompt_logprobs = None
        if seq.wants_prompt_logprobs and not request.sent_prompt_logprobs:
            request.sent_prompt_logprobs = True
            prompt_logprobs = tuple(seq.prompt_logprobs)
        return RequestOutput(
            request_id=seq.request_id,
            text=text,
            token_ids=tokens,
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            logprobs=None if logprob is None else (logprob,),
            prompt_logprobs=prompt_logprobs,
        )

    def stats(self) -> dict[str, float]:
        return {
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "kv_usage": self.block_manager.usage,
            "adapters_resident": len(self.adapters.slots.resident()),
        }
