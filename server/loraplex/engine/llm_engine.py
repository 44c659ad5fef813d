"""The synchronous engine: ``step()`` = schedule -> make adapters resident -> forward -> sample."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from loraplex import metrics
from loraplex.config import Config
from loraplex.engine.batch import build_batch
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from loraplex.engine.detokenizer import IncrementalDetokenizer
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.outputs import RequestOutput
from loraplex.engine.sampler import Sampler
from loraplex.engine.sampling_params import ParameterError, SamplingParams
from loraplex.engine.scheduler import Scheduler
from loraplex.engine.sequence import Sequence
from loraplex.lora.registry import AdapterRegistry
from loraplex.lora.slot_cache import SlotCache

log = logging.getLogger(__name__)


@dataclass
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None


class LLMEngine:
    """Owns the model runner, scheduler, adapter registry and slot cache; single-threaded."""

    def __init__(self, config: Config) -> None:
        self.config = config
        path = config.model.model or str(ensure_default_model())
        self.model_name = config.model.served_model_name or (
            DEFAULT_MODEL_NAME if config.model.model is None else path.rstrip("/").split("/")[-1]
        )
        self.runner = ModelRunner(path, config.model, config.cache, config.lora)
        self.tokenizer = self.runner.tokenizer
        limit = self.runner.max_position_embeddings or config.model.max_model_len
        layout = self.runner.layout
        self.max_model_len = min(
            config.model.max_model_len, limit, layout.num_blocks * layout.block_size
        )
        self.block_manager = BlockManager(layout.num_blocks, layout.block_size)
        self.scheduler = Scheduler(
            config.scheduler, self.block_manager, config.lora.max_loras, self.max_model_len
        )
        self.slots = SlotCache(config.lora.max_loras)
        self.registry = AdapterRegistry(self.runner.dtype, self.runner.lora.validate)
        if config.lora.adapters_dir:
            self.registry.load_dir(config.lora.adapters_dir)
        for name, folder in config.lora.lora_modules:
            self.registry.add(name, folder)
        self.sampler = Sampler()
        self.eos_token_id = self.tokenizer.eos_token_id
        self.requests: dict[str, _Request] = {}

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
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, adapter: str | None
    ) -> None:
        self.check_request(prompt_ids, params)
        key = self.registry.get(adapter).key if adapter else None
        seq = Sequence(request_id, list(prompt_ids), params, adapter=key)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(self.runner.device).manual_seed(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, params)
        self.requests[request_id] = _Request(seq, detok, generator)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self.scheduler.abort(request_id)
        return self._output(request, "", (), "abort")

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching; returns the outputs this step produced."""
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        keys = {s.seq.adapter for s in out.scheduled if s.seq.adapter}
        slot_of, loads = self.slots.acquire(keys)
        for key, slot in loads:
            self.runner.lora.load_slot(slot, self.registry.by_key(key))
            metrics.ADAPTER_LOADS.inc()
        batch = build_batch(
            out.scheduled,
            slot_of,
            self.runner.layout.block_size,
            self.config.lora.max_loras,
            self.runner.device,
        )
        logits = self.runner.forward(batch)
        self.scheduler.after_step(out)
        requests = [self.requests[s.request_id] for s in batch.sample_seqs]
        tokens = self.sampler(
            logits,
            [r.seq.params for r in requests],
            [r.seq.prompt_token_ids for r in requests],
            [r.seq.output_token_ids for r in requests],
            [r.generator for r in requests],
        )
        return [self._advance(r, t) for r, t in zip(requests, tokens, strict=True)]

    def _advance(self, request: _Request, token: int) -> RequestOutput:
        """Append one sampled token, detokenize it and decide whether the request is done."""
        seq, params = request.seq, request.seq.params
        seq.append_token(token)
        reason, text = None, ""
        if token in params.stop_token_ids or (token == self.eos_token_id and not params.ignore_eos):
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
            del self.requests[seq.request_id]
        return self._output(request, text, (token,), reason)

    @staticmethod
    def _output(
        request: _Request, text: str, tokens: tuple[int, ...], reason: str | None
    ) -> RequestOutput:
        seq = request.seq
        return RequestOutput(
            request_id=seq.request_id,
            text=text,
            token_ids=tokens,
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
        )

    def stats(self) -> dict[str, float]:
        return {
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "kv_usage": self.block_manager.usage,
            "adapters_resident": len(self.slots.resident()),
        }
