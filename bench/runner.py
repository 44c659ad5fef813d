"""Runs a :class:`scenarios.Plan`: every system set up and warmed up first, then ``rounds``
interleaved rounds (each runs every system once, on that round's requests; round k starts one
system later than round k-1), then the Poisson latency sweep. One system runs at a time.

Systems are the loraplex scenarios (over HTTP, on live ``loraplex serve`` processes) and the
in-process peers, all behind one signature: ``measure(requests, tick, tag) -> RunStats``
(``tick(n)`` advances the progress bar by n requests; ``tag`` names the run: ``warm-up``,
``r0``, ``r1``...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import loadgen
import peers
from scenarios import PEERS, VLLM_ROWS, Plan, Scenario, vllm_key
from stats import RunStats, median_run
from workload import Request, build_requests, with_poisson_arrivals

Tick = Callable[[int], None]
Measure = Callable[[Sequence[Request], Tick, str], RunStats]  # (requests, tick, run tag)
WARM_UP_TOKENS = 2


@dataclass
class System:
    """One row of the table and how to run it."""

    key: str
    label: str
    scenario: Scenario  # whose adapters the requests name
    measure: Measure
    warm_requests: int | None = None  # how many of a round's requests warm it up (None: all)
    uses: int | None = None  # how many of a round's requests a run serves (None: all)


class Bench:
    """The systems of one plan on live servers (``urls``: server name -> base URL) and the
    peers' models, sharing one token pool, seed and progress bar."""

    def __init__(
        self,
        plan: Plan,
        urls: dict[str, str],
        pool: Sequence[int],
        seed: int,
        progress: Any,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.plan, self.urls, self.pool, self.seed = plan, urls, pool, seed
        self.progress = progress
        self.base_models = {name: loadgen.base_model_name(url) for name, url in urls.items()}
        self.systems = [self._loraplex(s) for s in plan.scenarios if s.key not in skip]

    @property
    def concurrency(self) -> int:
        return self.plan.profile.concurrency

    def scenario(self, key: str) -> Scenario:
        return next(s for s in self.plan.scenarios if s.key == key)

    def requests(self, scenario: Scenario, round_: int) -> list[Request]:
        """Round ``round_``'s requests (round -1 is the warm-up): prompts and output lengths
        from the seed and round only, so all systems of a round get the same ones; round-robin
        adapters go on where the last round stopped."""
        spec = self.plan.profile.workload
        seed = self.seed * 1000 + round_ + 1
        first = round_ * spec.requests
        return build_requests(spec, self.pool, scenario.names, scenario.zipf, seed, first)

    # ---- systems -------------------------------------------------------------------------

    def _loraplex(self, s: Scenario) -> System:
        url, base_model = self.urls[s.server], self.base_models[s.server]

        def measure(requests: Sequence[Request], tick: Tick, tag: str) -> RunStats:
            return loadgen.run_load(
                url, requests, s.label, concurrency=self.concurrency, base_model=base_model,
                cache_salt=f"{s.key}-{tag}", tick=tick,
            )  # fmt: skip

        return System(s.key, s.label, s, measure)

    def add_vllm(self, url: str) -> None:
        """vLLM's server as a peer of the :data:`VLLM_ROWS` rows: the same requests over HTTP,
        rows ``vllm-<row>``."""
        base_model = loadgen.base_model_name(url)
        for row in VLLM_ROWS:
            if not any(s.key == row for s in self.plan.scenarios):
                continue
            scenario, key = self.scenario(row), vllm_key(row)

            def measure(requests, tick, tag, key=key) -> RunStats:
                return loadgen.run_load(
                    url, requests, key, concurrency=self.concurrency, base_model=base_model,
                    cache_salt=f"{key}-{tag}", tick=tick,
                )  # fmt: skip

            self.systems.append(System(key, f"vLLM {scenario.label[len('loraplex ') :]}",
                                       scenario, measure))  # fmt: skip

    def add_peers(self, model_dir: Path, store: Path, dtype: str) -> None:
        """Load the peers' models: one HF model for ``hf`` and ``bare``, one PEFT model holding
        the peer scenario's adapters for ``peft-mixed`` and ``peft-seq``."""
        import common

        base, lora = self.scenario("base"), self.scenario(self.plan.peer_scenario)
        batch = self.concurrency
        wanted = set(self.plan.peers)
        if wanted & {"hf", "bare"}:
            model, tok = common.load_hf_model(model_dir, dtype)
            steps = round(self.plan.profile.workload.output_tokens.mean)

            def hf(requests: Sequence[Request], tick: Tick, tag: str) -> RunStats:
                return peers.static_batches(model, tok, requests, batch, PEERS["hf"], tick)

            def bare(requests: Sequence[Request], tick: Tick, tag: str) -> RunStats:
                n = WARM_UP_TOKENS if tag == "warm-up" else steps
                return peers.bare_forward(model, tok, requests, batch, n, tick)

            if "hf" in wanted:
                self.systems.append(System("hf", PEERS["hf"], base, hf, batch))
            if "bare" in wanted:
                self.systems.append(System("bare", PEERS["bare"], base, bare, batch, batch))
        if wanted & {"peft-mixed", "peft-seq"}:
            peft_model, tok = peers.load_peft(model_dir, store, lora.names, dtype)

            def mixed(requests: Sequence[Request], tick: Tick, tag: str) -> RunStats:
                label = PEERS["peft-mixed"]
                return peers.static_batches(peft_model, tok, requests, batch, label, tick, True)

            def one(requests: Sequence[Request], tick: Tick, tag: str) -> RunStats:
                return peers.one_at_a_time(peft_model, tok, requests, PEERS["peft-seq"], tick)

            for key, fn, warm in (("peft-mixed", mixed, batch), ("peft-seq", one, 1)):
                if key in wanted:
                    self.systems.append(System(key, PEERS[key], lora, fn, warm))

    # ---- runs ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Each system once on the warm-up round's requests, ``WARM_UP_TOKENS`` new tokens
        each: every code path runs once, and the servers load the adapters those requests name
        (the peers hold all theirs already, so one batch warms them)."""
        for system in self.systems:
            self.progress.set_description(f"warm-up {system.key}")
            requests = self.requests(system.scenario, -1)[: system.warm_requests]
            warm = [replace(r, max_tokens=WARM_UP_TOKENS) for r in requests]
            system.measure(warm, lambda n: None, "warm-up")

    def run_rounds(self, rounds: int) -> dict[str, list[RunStats]]:
        results: dict[str, list[RunStats]] = {s.key: [] for s in self.systems}
        for round_ in range(rounds):
            shift = round_ % len(self.systems)
            for system in self.systems[shift:] + self.systems[:shift]:
                self.progress.set_description(f"round {round_ + 1}/{rounds} {system.key}")
                requests = self.requests(system.scenario, round_)
                run = system.measure(requests, self.progress.update, f"r{round_}")
                results[system.key].append(run)
                self.progress.write(
                    f"round {round_ + 1}: {system.key:>10}: {run.output_tokens} tokens in "
                    f"{run.seconds:.2f} s = {run.tokens_per_s:.1f} tok/s"
                )
        return results

    def units_per_round(self) -> int:
        n = self.plan.profile.workload.requests
        return sum(min(n, s.uses or n) for s in self.systems)

    def sweep(self, results: dict[str, list[RunStats]]) -> list[tuple[float, RunStats]]:
        """Poisson arrivals on the peer scenario at each fraction of its closed-loop req/s."""
        key = self.plan.peer_scenario
        if key not in results or not self.plan.profile.load:
            return []
        saturated = median_run(results[key]).requests_per_s
        system = next(s for s in self.systems if s.key == key)
        out = []
        for i, fraction in enumerate(self.plan.profile.load):
            rate = fraction * saturated
            self.progress.set_description(f"load {rate:.2f} req/s")
            requests = self.requests(system.scenario, 100 + i)
            arriving = with_poisson_arrivals(requests, rate, self.seed * 1000 + i)
            server = system.scenario.server
            url, base_model = self.urls[server], self.base_models[server]
            run = loadgen.run_load(
                url, arriving, f"{key} at {rate:.2f} req/s", concurrency=None,
                base_model=base_model, cache_salt=f"load-{i}", tick=self.progress.update,
            )  # fmt: skip
            out.append((rate, run))
            self.progress.write(
                f"load {rate:.2f} req/s: served {run.requests_per_s:.2f} req/s, "
                f"TTFT p99 {run.latency_ms()['ttft_p99']:.0f} ms, {run.failed} failed"
            )
        return out
