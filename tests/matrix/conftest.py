"""The matrix runs hundreds of tiny forwards: one intra-op thread each (on a shared 2-core
machine, OpenMP's spinning second thread makes a 64-wide matmul ~1000x slower)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
