"""Fair shares through a real server (issue 24, items 2 and 3): tenant acme floods, and tenant
globex's small requests, on its own adapter and on the base model, are measured alongside:
their latency in engine steps (``StepProbe``) and seconds, and their exact greedy text, against
the same requests sent alone.

- KV: acme's inference key streams long token prompts with ``ignore_eos``, 8 x 250 tokens
  into a cache of 768 (48 blocks of 16), so streams are preempted and wait.
- Slots: acme's user key runs one long request on each of its ``--max-loras`` adapters.

Before the fair shares, globex waited for acme's streams to drain (the numbers measured then
are in the tests); now its requests take the steps they take alone. ``-s`` prints them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from adapter_files import PROMPT
from completion_helpers import metric
from tenant_world import GREEDY, World, client, put, start_world, tenant_config

from loraplex.config import Config
from loraplex.engine.async_engine import AsyncEngine
from loraplex.engine.request.sequence import Sequence

MAX_LORAS = 4
NUM_BLOCKS = 48  # of 16 tokens: 768 tokens, three of the flood's streams
FLOOD_STREAMS, FLOOD_PROMPT, FLOOD_TOKENS = 8, 150, 100
SLOT_TOKENS = 150  # each of acme's requests holding a slot: 4 x 10 blocks, no KV pressure
SLACK_STEPS = 4  # under a flood, a victim may take this many steps more than alone


class StepProbe:
    """Counts the real engine's model steps, and for each sequence of ``tenant`` the steps it
    lived through from being queued to finishing (its latency in steps, free of the HTTP
    path's time). Reads only; it runs on the engine thread, around ``add`` and ``step``."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.steps = 0
        self.lived: dict[str, int] = {}  # request id (the API's response id) -> steps
        self._born: dict[Sequence, int] = {}

    def attach(self, engine: AsyncEngine) -> AsyncEngine:
        llm, scheduler = engine.engine, engine.engine.scheduler
        add, step = scheduler.add, llm.step

        def counted_add(seq: Sequence) -> None:
            add(seq)
            if seq.tenant == self.tenant:
                self._born[seq] = self.steps

        def counted_step() -> list:
            outputs = step()
            if not llm.idle:  # the step ran the model
                self.steps += 1
            for seq in [seq for seq in self._born if seq.is_finished]:
                request_id = seq.request_id.rpartition("-")[0]  # the child's "-0" dropped
                self.lived[request_id] = self.steps - self._born.pop(seq)
            return outputs

        scheduler.add, llm.step = counted_add, counted_step
        return engine


@dataclasses.dataclass
class Setup:
    world: World
    probe: StepProbe


@pytest.fixture(scope="module")
def setup(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Setup:
    cache = dataclasses.replace(tiny_config.cache, num_blocks=NUM_BLOCKS)
    lora = dataclasses.replace(tiny_config.lora, max_loras=MAX_LORAS)
    config = dataclasses.replace(tiny_config, cache=cache, lora=lora)
    probe = StepProbe("globex")

    def start(config: Config) -> str:
        return server_factory(config, probe.attach(AsyncEngine.from_config(config)))

    root = tmp_path_factory.mktemp("fair")
    world = start_world(start, tenant_config(config, root, tiny_adapters_dir), tiny_adapters_dir)
    assert put(world, "acme", "acme-extra", 55).status_code == 201  # acme's 4th adapter
    return Setup(world, probe)


@dataclasses.dataclass
class Timed:
    text: str
    seconds: float
    steps: int


def timed(setup: Setup, model: str) -> Timed:
    """globex's greedy completion of ``model``, with its latency in seconds and in steps."""
    start = time.perf_counter()
    response = client(setup.world.url, "globex").completions.create(
        model=model, prompt=PROMPT, **GREEDY
    )
    seconds = time.perf_counter() - start
    return Timed(response.choices[0].text, seconds, setup.probe.lived[response.id])


@contextmanager
def streams(setup: Setup, who: str, jobs: list[tuple[str, list[int] | str, int]]) -> Iterator[list]:
    """``who`` streams each (model, prompt, max_tokens) of ``jobs`` greedily with ignore_eos
    while the block runs; on exit, waits for all and checks that each ran to its length."""
    finished: list[str | None] = [None] * len(jobs)

    def run(index: int, model: str, prompt: list[int] | str, max_tokens: int) -> None:
        stream = client(setup.world.url, who).completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in stream:
            finished[index] = chunk.choices[0].finish_reason or finished[index]

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    try:
        yield finished
    finally:
        for thread in threads:
            thread.join(timeout=120)
    assert finished == ["length"] * len(jobs)  # the flood itself is served to the end


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def check(attack: str, alone: dict[str, Timed], loaded: dict[str, Timed]) -> None:
    """Print the victim's numbers, then check it got its text about as fast as alone."""
    for model, victim in loaded.items():
        was = alone[model]
        print(
            f"\n{attack}, globex on {model}: alone {was.steps} steps {was.seconds:.2f} s; "
            f"under attack {victim.steps} steps {victim.seconds:.2f} s"
        )
    for model, victim in loaded.items():
        assert victim.text == alone[model].text
        assert victim.steps <= alone[model].steps + SLACK_STEPS


def test_a_kv_flood_does_not_starve_another_tenant(setup: Setup, base_name: str) -> None:
    """Before: globex's 8-token requests waited behind acme's preempted streams, which did not
    fit: 21-49 steps on its adapter, 28-99 on the base model (0.3-0.7 s), against 8 alone;
    now 8, with the same text, and the flood takes the same 300 steps."""
    url = setup.world.url
    alone = {model: timed(setup, model) for model in ("support", base_name)}
    assert alone["support"].text == setup.world.texts["globex"]
    preempted = metric(url, "loraplex_preemptions_total")
    prompts = [[(7 * i + j) % 300 + 1 for j in range(FLOOD_PROMPT)] for i in range(FLOOD_STREAMS)]
    jobs = [("support", prompt, FLOOD_TOKENS) for prompt in prompts]
    first, start = setup.probe.steps, time.perf_counter()
    with streams(setup, "acme-app", jobs):
        wait_for(
            lambda: (
                metric(url, "loraplex_preemptions_total") > preempted
                and metric(url, "loraplex_kv_cache_usage_ratio") > 0.8
            ),
            "the flood to fill the KV cache",
        )
        loaded = {model: timed(setup, model) for model in ("support", base_name)}
    print(  # what the fair shares cost the flood itself
        f"\nKV flood: {setup.probe.steps - first} steps, {time.perf_counter() - start:.2f} s, "
        f"{metric(url, 'loraplex_preemptions_total') - preempted:.0f} preemptions"
    )
    check("KV flood", alone, loaded)


def test_one_tenant_holding_every_adapter_slot_does_not_starve_another(
    setup: Setup, base_name: str
) -> None:
    """Before: globex's request on its own adapter waited for one of acme's to finish (136
    steps against 8 alone), and its base-model request, sent 40 steps later (the starvation
    guard had tripped), waited behind it (101 steps); now both take 8, as alone."""
    alone = {model: timed(setup, model) for model in ("support", base_name)}
    adapters = ["support", "acme-only", "acme-doomed", "acme-extra"]
    jobs = [(adapter, "The quick brown fox", SLOT_TOKENS) for adapter in adapters]
    with streams(setup, "acme", jobs):
        wait_for(
            lambda: metric(setup.world.url, "loraplex_num_requests_running") >= MAX_LORAS,
            "acme's requests to hold every slot",
        )
        loaded: dict[str, Timed] = {}
        thread = threading.Thread(target=lambda: loaded.update(support=timed(setup, "support")))
        first = setup.probe.steps
        thread.start()
        # The guard trips after 32 skips: a base-model request sent then must not wait.
        wait_for(lambda: "support" in loaded or setup.probe.steps - first > 40, "40 steps")
        loaded[base_name] = timed(setup, base_name)
        thread.join(timeout=120)
    check("slots held", alone, loaded)
