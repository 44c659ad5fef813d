"""The synchronous engine. One step, in one direction: schedule -> activate (adapter slots) ->
execute (the runner's forward) -> sample -> process (tokens, stops, outputs) -> finish (what
stopped leaves); each stage hands its result to the next and none calls back up.
Single-threaded: ``AsyncEngine`` runs it on its own thread; benchmarks and tests drive it
directly. ``build_engine`` (``engine/build.py``) constructs it.
"""

from __future__ import annotations

import logging
import threading

from loraplex import metrics
from loraplex.adapters.tenancy import DEFAULT_TENANT
from loraplex.config import Config
from loraplex.engine.adapter_tiers.tiers import AdapterSpec, AdapterTiers
from loraplex.engine.constraints import Grammar
from loraplex.engine.errors import NonFiniteOutputError
from loraplex.engine.intake import Intake
from loraplex.engine.output.processor import OutputProcessor
from loraplex.engine.output.state import ParentRequest, RequestState, make_request
from loraplex.engine.request.outputs import RequestOutput
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.runner.model_runner import Executed, ModelRunner
from loraplex.engine.sample.sampler import NON_FINITE
from loraplex.engine.sample.step import Sampled, StepSampler
from loraplex.engine.sched.scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from loraplex.engine.stats import engine_stats

log = logging.getLogger(__name__)


class LLMEngine:
    """Requests in, output deltas out; owns the scheduler, the runner and the request states."""

    def __init__(
        self,
        config: Config,
        model_name: str,
        runner: ModelRunner,
        scheduler: Scheduler,
        tiers: AdapterTiers,
        max_model_len: int,
        adapter_loaded: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.scheduler = scheduler
        self.block_manager = scheduler.block_manager
        self.tiers = tiers
        self.registry = tiers.registry
        self.max_model_len = max_model_len
        self.vocab_size = runner.model.config.get_text_config().vocab_size
        self.eos_token_ids = runner.eos_token_ids()
        limit = config.scheduler.max_seqs_per_request
        self.intake = Intake(self.tokenizer, self.vocab_size, max_model_len, limit)
        self.sampler = StepSampler(self.vocab_size, runner.device)  # and the grammar masks
        self.outputs = OutputProcessor(self.eos_token_ids, max_model_len)
        self.idle = True  # the last step scheduled nothing
        self._adapter_loaded = adapter_loaded or threading.Event()
        self._new_requests = False
        self._parents: dict[str, ParentRequest] = {}
        self._states: dict[int, RequestState] = {}  # seq_id -> state of every unfinished child

    # ---- requests ----------------------------------------------------------------------

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
        """Check and build a request (any thread): every prompt is checked (``intake.py``) and
        the adapter resolved (a mix is combined) once, here. The version resolved is held from
        here on (a replace cannot take it away), so the request must then be ``submit``-ted or
        ``drop``-ped; nothing else is held or queued until ``submit``. ``cache_salt``: only
        requests with the same salt share prefix-cache blocks; ``tenant``: who asked (the
        waiting queue is round-robin across tenants); ``grammar``: ``params.constraint`` compiled
        (``GrammarService``), never here."""
        self.intake.check_request(prompts, params, n)
        key, merged = self.tiers.resolve(adapter)
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
        """Queue a prepared request (engine thread); its children hold their adapter version
        until they finish (``AdapterTiers.hold``)."""
        self._parents[parent.request_id] = parent
        self.tiers.hold(parent)
        for state in parent.children:
            self._states[state.seq.seq_id] = state
            self.scheduler.add(state.seq)
        self._new_requests = True

    def drop(self, parent: ParentRequest) -> None:
        """Engine thread: a prepared request that will never be queued (its client left) lets
        go of the adapter version ``prepare`` held (``AdapterTiers.drop``)."""
        self.tiers.drop(parent)

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
            executed, states, sampled = self._execute(out, slot_of)
        except Exception:  # one request's fault must not fail the others: find it
            log.exception("engine step failed; running its adapter groups apart")
            return outputs + self._run_apart(out, slot_of)
        return outputs + self._process(out, executed, states, sampled)

    def _execute(
        self, out: SchedulerOutput, slot_of: dict[str, int]
    ) -> tuple[Executed, list[RequestState], Sampled]:
        """execute -> sample for ``out``. Nothing is recorded yet, so a failed forward can be
        retried (the retry rewrites the same KV rows)."""
        executed = self.runner.execute(out.scheduled, slot_of)
        states = [self._states[seq.seq_id] for seq in executed.seqs]
        return executed, states, self.sampler.sample(states, executed.logits[: len(states)])

    def _process(
        self,
        out: SchedulerOutput,
        executed: Executed,
        states: list[RequestState],
        sampled: Sampled,
    ) -> list[RequestOutput]:
        """process -> finish: the step's tokens become outputs, and what stopped leaves."""
        self.scheduler.after_step(out)  # the KV cache now holds the step's tokens
        metrics.record_step(
            len(out.scheduled), sum(s.num_new_tokens for s in out.scheduled), len(out.preempted)
        )
        tokens, logprobs = sampled
        logits = executed.logits
        failed = [self._fail_non_finite(states[i]) for i, t in enumerate(tokens) if t == NON_FINITE]
        if failed:  # the others go on as if the failed rows were never sampled
            keep = [i for i, token in enumerate(tokens) if token != NON_FINITE]
            states, tokens = [states[i] for i in keep], [tokens[i] for i in keep]
            logprobs = [logprobs[i] for i in keep]
            logits = logits[keep + list(range(len(failed) + len(keep), logits.shape[0]))]
        outputs, finished = self.outputs.process(
            states, tokens, logprobs, logits, executed.prompt_targets
        )
        for state in finished:
            self._finish(state, state.finish_reason or "stop")
        return failed + outputs

    def _finish(self, state: RequestState, reason: str) -> None:
        """The one way a child ends: blocks freed, adapter released, state dropped."""
        state.finished = True
        self.scheduler.finish(state.seq, reason)
        self._states.pop(state.seq.seq_id, None)
        self.tiers.release(state)
        if state.parent.finished:
            self._parents.pop(state.parent.request_id, None)

    # ---- requests that cannot run --------------------------------------------------------

    def _end(self, state: RequestState, error: Exception | None) -> RequestOutput:
        """End an unfinished child early ("abort", with ``error`` if it failed): its output.
        A failure is logged with its reason (the client hears it too, but nobody else would)."""
        if error is not None:
            seq = state.seq
            log.warning("request %s (adapter %s) failed: %s", seq.request_id, seq.adapter, error)
        self._finish(state, "abort")
        return self.outputs.output(state, "", (), "abort", error=error)

    def _fail(self, scheduled: list[ScheduledSeq], error: Exception) -> list[RequestOutput]:
        """End every child in ``scheduled`` with ``error``."""
        states = [self._states.get(item.seq.seq_id) for item in scheduled]
        return [self._end(state, error) for state in states if state and not state.finished]

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
                ran = self._execute(part, slot_of)
            except Exception as exc:
                log.exception("step of adapter %s failed alone", adapter)
                outputs += self._fail(scheduled, RuntimeError(f"engine step failed: {exc}"))
            else:
                outputs += self._process(part, *ran)
        return outputs

    def _activate(self, out: SchedulerOutput, outputs: list[RequestOutput]) -> dict[str, int]:
        """Slots for the step's adapters; sequences whose adapter cannot be loaded leave the
        step (their requests fail, with the reason appended to ``outputs``)."""
        slot_of, failed = self.tiers.device.activate(out.adapter_keys())
        for key, error in failed.items():
            outputs += self._fail([s for s in out.scheduled if s.seq.adapter == key], error)
        out.scheduled = [s for s in out.scheduled if s.seq.adapter not in failed]
        return slot_of

    def _fail_unloadable(self) -> list[RequestOutput]:
        """Wait briefly when everything queued waits for adapter loads (rather than spin);
        prefetch queued adapters; end the children whose adapter could not be loaded."""
        if self.idle and self.scheduler.num_waiting and not self._new_requests:
            self._adapter_loaded.wait(0.05)
        self._adapter_loaded.clear()
        self._new_requests = False
        # Iterates a snapshot; running sequences' adapters keep their slots.
        failed = self.tiers.device.poll_waiting(self.scheduler.waiting, self.scheduler.running)
        return [self._end(self._states[seq.seq_id], error) for seq, error in failed]

    def stats(self) -> dict[str, object]:
        """What ``/metrics`` reports (``stats.py``), read from any thread."""
        return engine_stats(self.scheduler, self.tiers, self.config, len(self._parents))
