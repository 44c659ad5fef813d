"""The engine reads a slot only after its load: each step's forward is ordered after the
unfinished writes of the slots it reads, and after no others (tests/slot_helpers.py)."""

from __future__ import annotations

from pathlib import Path

from engine_helpers import make_engine, run
from slot_helpers import InFlightCopier

PROMPTS = [[5, 6, 7, 8], [9, 10, 11]]
GREEDY = {"temperature": 0, "ignore_eos": True}


def test_a_step_is_ordered_after_the_loads_of_its_slots(store: tuple[Path, Path]) -> None:
    reference = make_engine(store)
    expected = run(reference, [(PROMPTS[0], "attn"), (PROMPTS[1], "all")], max_tokens=3, **GREEDY)
    engine = make_engine(store)
    log: list[str] = []
    engine.runner.lora.copier = copier = InFlightCopier(log.append)
    forward = engine.runner.forward

    def logged_forward(batch):
        log.append("forward")
        return forward(batch)

    engine.runner.forward = logged_forward
    assert run(engine, [([1, 2, 3], None)], max_tokens=2, **GREEDY) == run(
        reference, [([1, 2, 3], None)], max_tokens=2, **GREEDY
    )
    assert copier.fences == [] and set(log) == {"forward"}  # base-only steps load nothing
    log.clear()
    got = run(engine, [(PROMPTS[0], "attn"), (PROMPTS[1], "all")], max_tokens=3, **GREEDY)
    assert got == expected
    # Each load is waited for once, after it was issued and before the next forward (the
    # first that reads it); later steps do not wait for the same write again.
    assert len(copier.fences) == 2
    for index in range(2):
        load, wait = log.index(f"load {index}"), log.index(f"wait {index}")
        assert log.count(f"wait {index}") == 1
        assert load < wait < log.index("forward", load)
    slots = engine.adapters.slots.resident()
    assert not any(engine.runner.lora.copier.is_ready(slot) for slot in slots.values())
    for fence in copier.fences:
        fence.finish()
    assert all(engine.runner.lora.copier.is_ready(slot) for slot in slots.values())


def test_a_step_does_not_wait_for_loads_it_does_not_read(store: tuple[Path, Path]) -> None:
    """A slot loaded for another request (here: pinned) leaves other steps free to run."""
    engine = make_engine(store)
    log: list[str] = []
    engine.runner.lora.copier = copier = InFlightCopier(log.append)
    engine.adapters.pin(engine.registry.get("all"))  # loaded now, its copy left in flight
    assert log == ["load 0"]  # nothing reads it yet: nothing waits
    run(engine, [(PROMPTS[0], "attn"), (PROMPTS[1], None)], max_tokens=2, **GREEDY)
    assert copier.fences[0].compute_waits == 0 and log.count("wait 1") == 1
    assert copier.writes.held()[0].name == "all"  # still in flight: its weights stay held
    run(engine, [(PROMPTS[1], "all")], max_tokens=2, **GREEDY)
    assert copier.fences[0].compute_waits == 1  # the first step that reads it
