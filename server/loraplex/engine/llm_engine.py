"""The synchronous engine: ``step()`` = schedule -> activate adapters -> batch -> forward ->
sample -> process. Single-threaded: ``AsyncEngine`` runs it on its own thread; benchmarks and
tests drive it directly. ``build_engine`` (``engine/build.py``) constructs it."""

from __future__ import annotations

import logging
import threading

import torch

from loraplex import metrics
from loraplex.config import Config
from loraplex.engine.adapters import AdapterSpec, EngineAdapters
from loraplex.engine.admission import DEFAULT_TENANT
from loraplex.engine.batch import build_batch
from loraplex.engine.constraints import ConstraintMasks, Grammar
from loraplex.engine.decode_runner import decode_runner_for
from loraplex.engine.engine_stats import engine_stats
from loraplex.engine.errors import NonFiniteOutputError
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.output_processor import OutputProcessor
from loraplex.engine.outputs import RequestOutput, TokenLogprob
from loraplex.engine.request import ParentRequest, RequestState, make_request
from loraplex.engine.sampler import NON_FINITE, Sampler, guard_non_finite, read_sampled
from loraplex.engine.sampling_params import ParameterError, SamplingParams
from loraplex.engine.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from loraplex.engine.sequence import Sequence

log = logging.getLogger(__name__)
# One step's sampled tokens and their logprob entries (None where not asked for).
Sampled = tuple[list[int], list[TokenLogprob | None]]


class LLMEngine:
    """Requests in, output deltas out; owns the scheduler, the runner and the request states."""

    def __init__(
        self,
        config: Config,
        model_name: str,
        runner: ModelRunner,
        scheduler: Scheduler,
        adapters: EngineAdapters,
        max_model_len: int,
        adapter_loaded: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.scheduler = scheduler
        self.block_manager = scheduler.block_manager
        self.adapters = adapters
        self.registry = adapters.registry
        self.max_model_len = max_model_len
        self.vocab_size = runner.model.config.get_text_config().vocab_size
        self.eos_token_ids = runner.eos_token_ids()
        self.sampler = Sampler()
        self.masks = ConstraintMasks(self.vocab_size, runner.device)  # constrained rows' masks
        self.outputs = OutputProcessor(self.eos_token_ids, max_model_len, self._finish)
        # Pure-decode steps: persistent buffers, CUDA graphs where they can be captured.
        self.decode = decode_runner_for(
            runner, config.scheduler.max_num_seqs, max_model_len, config.model.enforce_eager
        )
        self.idle = True  # the last step scheduled nothing
        self._adapter_loaded = adapter_loaded or threading.Event()
        self._new_requests = False
        self._parents: dict[str, ParentRequest] = {}
        self._states: dict[int, RequestState] = {}  # seq_id -> state of every unfinished child

    # ---- requests ----------------------------------------------------------------------

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Refuse what can never run, before it is queued."""
        if not prompt_ids:
            raise ParameterError("prompt", "the prompt is empty")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise ParameterError("prompt", f"token ids must be in [0, {self.vocab_size})")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ParameterError(
                "max_tokens" if len(prompt_ids) < self.max_model_len else "prompt",
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the model's context length of {self.max_model_len} tokens",
            )

    def check_fanout(self, num_prompts: int, n: int) -> None:
        """A request queues ``num_prompts * n`` sequences; refuse more than the option allows
        (before anything is tokenized, so call it first)."""
        limit = self.config.scheduler.max_seqs_per_request
        if num_prompts * n > limit:
            raise ParameterError(
                "n" if n > 1 else "prompt",
                f"{num_prompts} prompts x n={n} is more than the {limit} sequences one request "
                "may queue (--max-seqs-per-request)",
            )

    def prepare(
        self,
        request_id: str,
        prompts: list[list[int]],
        params: SamplingParams,
        adapter: AdapterSpec = None,
        *,
        n: int = 1,
        cache_salt: str | None = None,
        tenant: str = DEFAULT_TENANT,
        grammar: Grammar | None = None,
    ) -> ParentRequest:
        """Check and build a request (any thread): every prompt is checked and the adapter
        resolved (a mix is combined) once, here. The version resolved is held from here on
        (a replace cannot take it away), so the request must then be ``submit``-ted or
        ``drop``-ped; nothing else is held or queued until ``submit``.
        ``cache_salt``: only requests with the same salt share prefix-cache blocks;
        ``tenant``: who asked (the waiting queue is round-robin across tenants);
        ``grammar``: ``params.constraint`` compiled (``GrammarService``), never here."""
        self.check_fanout(len(prompts), n)
        for prompt in prompts:
            self.check_prompt(prompt, params)
        key, merged = self.adapters.resolve(adapter)
        try:
            parent = make_request(
                request_id,
                prompts,
                params,
                key,
                merged,
                tokenizer=self.tokenizer,
                device=self.runner.device,
                n=n,
                cache_salt=cache_salt,
                tenant=tenant,
                grammar=grammar,
            )
        except BaseException:
            if key is not None:
                self.registry.release(key)
            raise
        parent.holds_adapter = key is not None
        return parent

    def submit(self, parent: ParentRequest) -> None:
        """Queue a prepared request (engine thread); each child holds its adapter version,
        and a pre-merged one its merged copy, until it finishes (the request's own hold from
        ``prepare`` passes to them). A copy unmerged and dropped since ``prepare`` is gone:
        the children run dynamically (the same weights)."""
        self._parents[parent.request_id] = parent
        merges = self.adapters.merges
        merged = parent.merged and merges.hold(parent.adapter, len(parent.children))
        parent.merged = merged
        if parent.adapter is not None and not merged:
            hit = parent.adapter in self.registry.host
            metrics.record_adapter_lookups("host", hits=int(hit), misses=int(not hit))
        for state in parent.children:
            state.seq.merged = state.holds_merged = merged
            if parent.adapter is not None:
                self.registry.hold_key(parent.adapter)
                state.holds_adapter = True
            self._states[state.seq.seq_id] = state
            self.scheduler.add(state.seq)
        self.drop(parent)
        self._new_requests = True

    def drop(self, parent: ParentRequest) -> None:
        """Engine thread: let go of the adapter version ``prepare`` held for ``parent`` (once;
        after ``submit`` its children hold their own)."""
        if parent.holds_adapter and parent.adapter is not None:
            parent.holds_adapter = False
            self.adapters.release(parent.adapter)

    def add_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        adapter: AdapterSpec = None,
        cache_salt: str | None = None,
        n: int = 1,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``prepare`` + ``submit`` of one prompt; outputs carry ``request_id``."""
        parent = self.prepare(
            request_id, [prompt_ids], params, adapter, n=n, cache_salt=cache_salt, tenant=tenant
        )
        self.submit(parent)

    def abort(self, request_id: str, error: Exception | None = None) -> list[RequestOutput]:
        """Finish every unfinished child of ``request_id`` ("abort"); one output each."""
        parent = self._parents.get(request_id)
        if parent is None:
            return []
        return [self._end(state, error) for state in parent.children if not state.finished]

    def abort_all(self, error: Exception | None = None) -> list[RequestOutput]:
        return [out for rid in list(self._parents) for out in self.abort(rid, error)]

    def _end(self, state: RequestState, error: Exception | None) -> RequestOutput:
        """End an unfinished child early ("abort", with ``error`` if it failed): its output.
        A failure is logged with its reason (the client hears it too, but nobody else would)."""
        if error is not None:
            seq = state.seq
            log.warning("request %s (adapter %s) failed: %s", seq.request_id, seq.adapter, error)
        self._finish(state, "abort")
        return self.outputs.output(state, "", (), "abort", error=error)

    def _finish(self, state: RequestState, reason: str) -> None:
        """The one way a child ends: blocks freed, adapter released, state dropped."""
        state.finished = True
        self.scheduler.finish(state.seq, reason)
        self._states.pop(state.seq.seq_id, None)
        if state.holds_adapter and state.seq.adapter is not None:
            state.holds_adapter = False
            self.adapters.release(state.seq.adapter)
        if state.holds_merged:
            state.holds_merged = False
            self.adapters.merges.release(state.seq.adapter)
        if state.parent.finished:
            self._parents.pop(state.parent.request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_requests(self) -> int:
        return len(self._parents)

    # ---- the step ----------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching; returns the outputs this step produced."""
        outputs = self._fail_unloadable()
        out = self.scheduler.schedule()
        self.idle = out.is_empty
        slot_of = self._activate(out, outputs)
        if out.is_empty:
            return outputs
        try:
            ran = self._forward(out, slot_of)
        except Exception:  # one request's fault must not fail the others: find it
            log.exception("engine step failed; running its adapter groups apart")
            return outputs + self._run_apart(out, slot_of)
        return outputs + self._process(out, *ran)

    def _forward(
        self, out: SchedulerOutput, slot_of: dict[str, int]
    ) -> tuple[list[tuple[Sequence, int]], list[RequestState], Sampled, torch.Tensor]:
        """batch -> forward -> sample for ``out``: (prompt tokens to score, states that
        sample, their tokens and logprobs, logits). Nothing is recorded yet, so a failed
        forward can be retried (the retry rewrites the same KV rows)."""
        if self.decode.eligible(out.scheduled):
            seqs, logits = self.decode.run(out.scheduled, slot_of)
            prompt_targets: list[tuple[Sequence, int]] = []
        else:
            batch = build_batch(
                out.scheduled,
                slot_of,
                self.block_manager.block_size,
                self.config.lora.max_loras,
                self.runner.device,
            )
            seqs, prompt_targets = batch.sample_seqs, batch.prompt_targets
            logits = self.runner.forward(batch)
        states = [self._states[seq.seq_id] for seq in seqs]
        return prompt_targets, states, self._sample(states, logits[: len(states)]), logits

    def _process(
        self,
        out: SchedulerOutput,
        prompt_targets: list[tuple[Sequence, int]],
        states: list[RequestState],
        sampled: Sampled,
        logits: torch.Tensor,
    ) -> list[RequestOutput]:
        self.scheduler.after_step(out)  # the KV cache now holds the step's tokens
        metrics.record_step(
            len(out.scheduled), sum(s.num_new_tokens for s in out.scheduled), len(out.preempted)
        )
        tokens, logprobs = sampled
        failed = [self._fail_non_finite(states[i]) for i, t in enumerate(tokens) if t == NON_FINITE]
        if failed:  # the others go on as if the failed rows were never sampled
            keep = [i for i, token in enumerate(tokens) if token != NON_FINITE]
            states, tokens = [states[i] for i in keep], [tokens[i] for i in keep]
            logprobs = [logprobs[i] for i in keep]
            logits = logits[keep + list(range(len(failed) + len(keep), logits.shape[0]))]
        return failed + self.outputs.process(states, tokens, logprobs, logits, prompt_targets)

    def _fail_non_finite(self, state: RequestState) -> RequestOutput:
        """End a child whose logits went inf/NaN: its blocks leave the prefix cache, and those
        it held alone are zeroed before the pool hands them out again."""
        blocks = list(state.seq.block_table)
        self.block_manager.unpublish(blocks)
        output = self._end(state, NonFiniteOutputError(state.seq.adapter))
        self.runner.clear_blocks([b for b in blocks if self.block_manager.is_free(b)])
        return output

    def _run_apart(self, out: SchedulerOutput, slot_of: dict[str, int]) -> list[RequestOutput]:
        """Retry a failed step one adapter group at a time (base-model sequences are one
        group): only the groups that fail again fail, with the error of their own run."""
        groups: dict[str | None, list[ScheduledSeq]] = {}
        for scheduled in out.scheduled:
            groups.setdefault(scheduled.seq.adapter, []).append(scheduled)
        outputs: list[RequestOutput] = []
        for adapter, scheduled in groups.items():
            part = SchedulerOutput(scheduled)
            try:
                ran = self._forward(part, slot_of)
            except Exception as exc:
                log.exception("step of adapter %s failed alone", adapter)
                outputs += self._fail(part, RuntimeError(f"engine step failed: {exc}"))
            else:
                outputs += self._process(part, *ran)
        return outputs

    def _activate(self, out: SchedulerOutput, outputs: list[RequestOutput]) -> dict[str, int]:
        """Slots for the step's adapters; sequences whose adapter cannot be loaded leave the
        step (their requests fail, with the reason appended to ``outputs``)."""
        slot_of, failed = self.adapters.activate(out.adapter_keys())
        for key, error in failed.items():
            dropped = SchedulerOutput([s for s in out.scheduled if s.seq.adapter == key])
            outputs += self._fail(dropped, error)
        out.scheduled = [s for s in out.scheduled if s.seq.adapter not in failed]
        return slot_of

    def _fail(self, out: SchedulerOutput, error: Exception) -> list[RequestOutput]:
        """End every child scheduled in ``out`` with ``error``."""
        states = [self._states.get(scheduled.seq.seq_id) for scheduled in out.scheduled]
        return [self._end(state, error) for state in states if state and not state.finished]

    def _fail_unloadable(self) -> list[RequestOutput]:
        """Wait briefly when everything queued waits for adapter loads (rather than spin);
        prefetch queued adapters; end the children whose adapter could not be loaded."""
        if self.idle and self.scheduler.num_waiting and not self._new_requests:
            self._adapter_loaded.wait(0.05)
        self._adapter_loaded.clear()
        self._new_requests = False
        # Iterates a snapshot; running sequences' adapters keep their slots.
        failed = self.adapters.poll_waiting(self.scheduler.waiting, self.scheduler.running)
        return [self._end(self._states[seq.seq_id], error) for seq, error in failed]

    def _sample(self, states: list[RequestState], logits: torch.Tensor) -> Sampled:
        """Tokens and logprob entries of the sampled rows, in one device->host copy
        (``NON_FINITE`` for a row whose logits went inf/NaN)."""
        finite = guard_non_finite(logits)
        self.masks.apply(logits, [s.matcher for s in states])  # one call for every grammar row
        tokens = self.sampler.sample(
            logits,
            [s.params for s in states],
            [s.seq.prompt_token_ids for s in states],
            [s.seq.output_token_ids for s in states],
            [s.generator for s in states],
        )
        return read_sampled(tokens, logits, [s.params.logprobs for s in states], finite)

    def stats(self) -> dict[str, object]:
        """What ``/metrics`` reports (``engine_stats.py``), read from any thread."""
        return engine_stats(self.scheduler, self.adapters, self.config, len(self._parents))
