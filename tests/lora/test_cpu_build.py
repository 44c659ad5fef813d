"""Building the C add_lora kernel: the cache, an unwritable cache, a compiler that fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import needs_cc

from loraplex.lora.ops import add_lora, select_add_lora
from loraplex.lora.ops.cpu_build import KernelBuildError, build

CPU = torch.device("cpu")


@needs_cc
def test_build_is_cached(tmp_path: Path) -> None:
    first = build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial files left


@needs_cc
def test_an_unwritable_cache_falls_back_to_torch(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a file where the cache folder should be
    cache = tmp_path / "file" / "kernels"
    with pytest.raises(KernelBuildError, match="cannot write"):
        build(cache)
    assert select_add_lora("auto", CPU, torch.float32, cache, 16) == ("torch", add_lora)


def test_a_failing_compile_is_reported(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc (fake) 1.0'\n[ \"$1\" = --version ] || exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(KernelBuildError, match="could not compile"):
        build(tmp_path / "kernels")
    assert list((tmp_path / "kernels").iterdir()) == []
