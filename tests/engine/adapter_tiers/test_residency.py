"""The engine and asynchronous slot copies: a step is ordered after the loads of the slots it
reads and of no others; queued adapters are copied into free slots ahead of admission, and a
request is admitted only once its copy is done, so no step waits for it (tests/slot_helpers.py
leaves every copy in flight until the test finishes it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine_helpers import make_engine, run
from slot_helpers import InFlightCopier

from loraplex.adapters.card import adapter_name
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

GREEDY = {"temperature": 0, "ignore_eos": True}
BASE_PROMPT, ADAPTER_PROMPT = [1, 2, 3], [5, 6, 7, 8]


def in_flight_engine(store: tuple[Path, Path]) -> tuple[LLMEngine, InFlightCopier, list[str]]:
    """An engine whose slot copies stay in flight until finished; ``log`` records each load
    ("load i"), each wait of the compute stream for one ("wait i") and each forward."""
    engine = make_engine(store)
    log: list[str] = []
    engine.runner.lora.copier = copier = InFlightCopier(log.append)
    forward = engine.runner.forward

    def logged_forward(batch):
        log.append("forward")
        return forward(batch)

    engine.runner.forward = logged_forward
    return engine, copier, log


def steps_until(engine: LLMEngine, done: Callable[[], bool], outputs: dict) -> None:
    for _ in range(200):
        if done():
            return
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
    raise AssertionError("the condition never held")


def waiting_adapters(engine: LLMEngine) -> set[str | None]:
    """The adapter names of the queued (not yet admitted) sequences."""
    return {seq.adapter and adapter_name(seq.adapter) for seq in engine.scheduler.waiting}


def test_activate_orders_the_step_after_its_loads_only(store: tuple[Path, Path]) -> None:
    engine, copier, log = in_flight_engine(store)
    adapters = engine.tiers
    keys = {}
    for name in ("attn", "all"):
        card = adapters.registry.get(name)
        adapters.registry.keep(card.key, adapters.load(card))
        keys[name] = card.key
    adapters.device.activate({keys["attn"]})
    assert log == ["load 0", "wait 0"]  # issued, then the step that reads it waits
    adapters.device.activate({keys["attn"]})
    assert log == ["load 0", "wait 0"]  # resident, and the compute stream is ordered already
    adapters.device.activate({keys["all"]})
    assert log[2:] == ["load 1", "wait 1"] and copier.fences[0].compute_waits == 1


def test_a_queued_adapter_is_copied_ahead_and_no_step_waits(store: tuple[Path, Path]) -> None:
    reference = make_engine(store)
    expected = [
        run(reference, [(prompt, adapter)], max_tokens=6, **GREEDY)[0]
        for prompt, adapter in [(BASE_PROMPT, None), (ADAPTER_PROMPT, "attn")]
    ]
    engine, copier, log = in_flight_engine(store)
    card = engine.registry.get("attn")
    engine.registry.keep(card.key, engine.tiers.load(card))  # in host memory already
    outputs: dict[str, list[int]] = {}
    engine.add_request("0", BASE_PROMPT, SamplingParams(max_tokens=6, **GREEDY), None)
    steps_until(engine, lambda: "0" in outputs, outputs)  # running
    engine.add_request("1", ADAPTER_PROMPT, SamplingParams(max_tokens=6, **GREEDY), "attn")
    steps_until(engine, lambda: bool(copier.fences), outputs)  # copied ahead of admission
    assert waiting_adapters(engine) == {"attn"}
    for _ in range(3):  # the copy is in flight: the request waits, the base one runs on
        before = len(outputs.get("0", []))
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.token_ids)
        assert waiting_adapters(engine) == {"attn"} and len(outputs["0"]) == before + 1
    copier.fences[0].finish()
    steps_until(engine, lambda: not engine.has_unfinished(), outputs)
    assert [outputs["0"], outputs["1"]] == expected
    assert not any(event.startswith("wait") for event in log)  # no step ever waited


def test_a_pinned_load_in_flight_holds_up_nobody(store: tuple[Path, Path]) -> None:
    """A slot loaded for a pin leaves other steps free, keeps its weights while in flight,
    and its first reader is admitted once the copy is done, without waiting on the device."""
    engine, copier, log = in_flight_engine(store)
    engine.tiers.pin(engine.registry.get("all"))
    assert log == ["load 0"]  # nothing reads it yet: nothing waits
    outputs: dict[str, list[int]] = {}
    engine.add_request("0", BASE_PROMPT, SamplingParams(max_tokens=4, **GREEDY), None)
    steps_until(engine, lambda: "0" in outputs, outputs)  # running
    engine.add_request("1", ADAPTER_PROMPT, SamplingParams(max_tokens=3, **GREEDY), "all")
    steps_until(engine, lambda: len(outputs["0"]) == 4, outputs)
    assert waiting_adapters(engine) == {"all"}  # held back while its slot is being written
    assert copier.fences[0].compute_waits == 0
    assert copier.writes.held()[0].name == "all"  # in flight: its weights stay held
    copier.fences[0].finish()
    steps_until(engine, lambda: not engine.has_unfinished(), outputs)
    assert len(outputs["1"]) == 3 and copier.fences[0].compute_waits == 0
    assert not any(event.startswith("wait") for event in log)


def test_with_nothing_running_a_request_joins_mid_copy(store: tuple[Path, Path]) -> None:
    """Holding a request back helps nobody when no other sequence runs: it joins at once,
    and its step is ordered after the copy on the device instead."""
    engine, copier, log = in_flight_engine(store)
    engine.tiers.pin(engine.registry.get("attn"))  # its copy stays in flight throughout
    outputs: dict[str, list[int]] = {}
    engine.add_request("0", ADAPTER_PROMPT, SamplingParams(max_tokens=2, **GREEDY), "attn")
    steps_until(engine, lambda: not engine.has_unfinished(), outputs)
    assert len(outputs["0"]) == 2
    assert log[:3] == ["load 0", "wait 0", "forward"] and log.count("wait 0") == 1
    assert not copier.is_ready(engine.tiers.slots.lookup(engine.registry.get("attn").key))
