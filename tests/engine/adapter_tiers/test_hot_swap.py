"""Replacing an adapter under load (issue 25), on the engine: a request finishes on the version
it resolved, even one resolved before the replace and evicted from host memory since; a
resident adapter's new version is written into a device slot at once (over the old one when no
request holds it, else into a slot of its own while the old one's requests finish)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
from builders import save_adapter

from loraplex.adapters.card import AdapterCard
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.async_engine import AsyncEngine
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

PROMPT = [5, 6, 7, 8, 9]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
ATTN = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


@pytest.fixture
def store(store: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The module's model with a fresh copy of its adapters (tests here replace one)."""
    model_dir, adapters = store
    return model_dir, Path(shutil.copytree(adapters, tmp_path / "adapters"))


@pytest.fixture
def version2(store: tuple[Path, Path], tmp_path: Path) -> Path:
    """Another version of "attn": same shapes, other weights."""
    return save_adapter(store[0], tmp_path / "attn-v2", 7, **ATTN)


def engine_for(store: tuple[Path, Path], max_cpu_loras: int = 8) -> LLMEngine:
    model_dir, adapters = store
    lora = LoRAConfig(
        max_loras=2, max_lora_rank=8, max_cpu_loras=max_cpu_loras, adapters_dir=str(adapters)
    )
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64),
            cache=CacheConfig(block_size=4, num_blocks=64),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
            lora=lora,
        )
    )


def replace(engine: LLMEngine, name: str, folder: Path) -> tuple[AdapterCard, AdapterCard]:
    """What AdapterService.register does for replace=true, its engine-thread part included."""
    card, old = engine.registry.register_version(name, folder, replace=True)
    assert old is not None
    engine.tiers.swap(old.key, card.key)
    return card, old


def run_all(engine: LLMEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return tokens


def alone(engine: LLMEngine, adapter: str) -> list[int]:
    engine.add_request("alone", PROMPT, GREEDY, adapter)
    return run_all(engine)["alone"]


def counting_loads(engine: LLMEngine) -> list[int]:
    """The slots written from now on (the real writes still happen)."""
    written: list[int] = []
    load_slot = engine.runner.lora.load_slot

    def spy(slot: int, adapter: object) -> None:
        written.append(slot)
        load_slot(slot, adapter)  # type: ignore[arg-type]

    engine.runner.lora.load_slot = spy  # type: ignore[method-assign]
    return written


def test_a_request_resolved_before_a_replace_runs_on_its_version(
    store: tuple[Path, Path], version2: Path
) -> None:
    engine = engine_for(store, max_cpu_loras=1)
    v1 = alone(engine, "attn")
    engine.registry.register("v2", version2)
    v2 = alone(engine, "v2")  # host memory holds one adapter: attn's version 1 left it
    assert v1 != v2 and engine.registry.get("attn").key not in engine.registry.host
    parent = engine.prepare("straddles", [PROMPT], GREEDY, "attn")  # resolves version 1
    _, old = replace(engine, "attn", version2)
    engine.submit(parent)
    assert run_all(engine)["straddles"] == v1
    assert engine.registry.is_retired(old.key) and old.key not in engine.registry.host
    assert alone(engine, "attn") == v2


def test_a_dropped_request_lets_its_version_go(store: tuple[Path, Path], version2: Path) -> None:
    engine = engine_for(store)
    parent = engine.prepare("left", [PROMPT], GREEDY, "attn")  # the client left before submit
    _, old = replace(engine, "attn", version2)
    assert not engine.registry.is_retired(old.key)
    engine.drop(parent)
    engine.drop(parent)  # once only
    assert engine.registry.is_retired(old.key)


def test_an_unused_resident_version_is_overwritten_in_its_slot(
    store: tuple[Path, Path], version2: Path
) -> None:
    engine = engine_for(store)
    engine.registry.register("v2", version2)
    v2 = alone(engine, "v2")
    alone(engine, "attn")
    slots = engine.tiers.slots
    slot = slots.lookup(engine.registry.get("attn").key)
    written = counting_loads(engine)
    card, old = replace(engine, "attn", version2)
    assert slots.lookup(card.key) == slot and slots.lookup(old.key) is None  # same slot
    assert written == [slot]  # written once, at the replace
    assert alone(engine, "attn") == v2
    assert written == [slot]  # the request found it resident: nothing loaded


def test_a_running_request_keeps_its_slot_and_the_new_version_gets_another(
    store: tuple[Path, Path], version2: Path
) -> None:
    engine = engine_for(store)
    engine.registry.register("v2", version2)
    v2 = alone(engine, "v2")
    v1 = alone(engine, "attn")
    slots = engine.tiers.slots
    engine.add_request("old", PROMPT, GREEDY, "attn")
    tokens = {"old": [t for _ in range(3) for out in engine.step() for t in out.token_ids]}
    assert 0 < len(tokens["old"]) < GREEDY.max_tokens  # running
    card, old = replace(engine, "attn", version2)
    old_slot, new_slot = slots.lookup(old.key), slots.lookup(card.key)
    assert old_slot is not None and new_slot is not None and old_slot != new_slot
    engine.add_request("new", PROMPT, GREEDY, "attn")  # runs beside the old one
    for request_id, more in run_all(engine).items():
        tokens.setdefault(request_id, []).extend(more)
    assert tokens == {"old": v1, "new": v2}
    assert slots.lookup(old.key) is None  # freed by its last request
    assert slots.lookup(card.key) == new_slot
    assert engine.registry.is_retired(old.key)


def test_a_request_failed_in_the_engine_is_logged_with_its_reason(
    store: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A delete keeps nothing for queued requests: one whose version was never read into host
    memory fails (404), and the log says which request, on which adapter, and why."""
    engine = engine_for(store, max_cpu_loras=1)
    engine.add_request("doomed", PROMPT, GREEDY, "attn")
    key = engine.registry.get("attn").key
    assert key not in engine.registry.host
    engine.registry.remove("attn")
    caplog.set_level(logging.WARNING, logger="loraplex.engine.llm_engine")
    outputs = [out for _ in range(50) if engine.has_unfinished() for out in engine.step()]
    assert [type(out.error).__name__ for out in outputs] == ["AdapterNotFoundError"]
    [line] = [r.getMessage() for r in caplog.records if r.name.endswith("llm_engine")]
    assert line.startswith(f"request doomed-0 (adapter {key}) failed: ")
    assert "attn" in line.split("failed: ")[1]


def test_a_request_cancelled_while_prepared_lets_its_version_go(
    store: tuple[Path, Path], version2: Path
) -> None:
    """The client leaves while its request is being prepared on a worker thread: once the
    worker is done, the engine thread drops the version it held (no leak, so a replace can
    retire it)."""
    engine = AsyncEngine(engine_for(store))
    gate, entered = threading.Event(), threading.Event()
    prepare = engine.engine.prepare

    def slow_prepare(*args: object, **kwargs: object) -> object:
        parent = prepare(*args, **kwargs)  # type: ignore[arg-type]
        entered.set()
        gate.wait(10)  # the client hangs up meanwhile
        return parent

    engine.engine.prepare = slow_prepare  # type: ignore[method-assign]
    registry = engine.engine.registry
    key = registry.get("attn").key
    engine.start()
    try:

        async def client() -> None:
            task = asyncio.ensure_future(engine.submit("gone", [PROMPT], GREEDY, "attn"))
            await asyncio.to_thread(entered.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert registry.host.held(key)  # the worker still holds it
            gate.set()

        asyncio.run(client())  # returns once the worker thread is done
        deadline = time.monotonic() + 10
        while registry.host.held(key):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert engine.num_in_flight == 0 and not engine.engine.has_unfinished()
    finally:
        gate.set()
        engine.shutdown()
