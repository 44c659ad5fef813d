"""What every hardening test checks while it attacks a live server: a concurrent client's
requests come back unharmed (same status, same greedy text), ``/health`` answers fast, and
process resources (RSS, open files) are measured from ``/proc/self`` (the test servers run in
this process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from adapter_files import complete, text

HEALTH_BUDGET_S = 1.0  # /health must answer within this while under attack


def rss_mb() -> float:
    """Resident memory of this process (the in-process test server included), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@dataclass
class Watch:
    """What the bystanders saw: every completion per model and every /health latency."""

    results: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    health_s: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)

    @property
    def worst_health_s(self) -> float:
        return max(self.health_s, default=0.0)


@contextmanager
def bystanders(url: str, expected: dict[str, str], min_runs: int = 1) -> Iterator[Watch]:
    """While the block runs, one client per model in ``expected`` completes greedily in a loop
    and another probes ``/health``; on exit, asserts every completion equals ``expected`` and
    every probe took under :data:`HEALTH_BUDGET_S`."""
    watch = Watch({model: [] for model in expected})
    stop = threading.Event()

    def client(model: str) -> None:
        runs = watch.results[model]
        while not stop.is_set() or len(runs) < min_runs:
            response = complete(url, model)
            ok = response.status_code == 200
            runs.append((response.status_code, text(response) if ok else response.text))

    def health() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                start = time.perf_counter()
                status = http.get(f"{url}/health").status_code
                watch.health_s.append(time.perf_counter() - start)
                if status != 200:
                    watch.health_failures.append(str(status))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(m,)) for m in expected]
    threads.append(threading.Thread(target=health))
    for thread in threads:
        thread.start()
    try:
        yield watch
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    for model, runs in watch.results.items():
        assert runs and all(run == (200, expected[model]) for run in runs), (model, runs)
    assert not watch.health_failures, watch.health_failures
    assert watch.health_s and watch.worst_health_s < HEALTH_BUDGET_S, watch.worst_health_s
