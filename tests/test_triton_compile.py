"""The Triton kernels compile for an H100/H200 (sm_90) at the configurations their backends
choose, checked here without a GPU (``triton_sm90.py``, run without the interpreter)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraplex.triton_support import INTERPRET_VARIABLE

TESTS = Path(__file__).parent
SERVER = TESTS.parent / "server"


def _ptxas() -> Path | None:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.is_file() else None


@pytest.mark.triton
@pytest.mark.skipif(_ptxas() is None, reason="triton (with its bundled ptxas) is not installed")
def test_every_kernel_compiles_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != INTERPRET_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(TESTS / "triton_sm90.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernels compiled for sm_90" in done.stdout
