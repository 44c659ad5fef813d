"""Start-up cost of a store full of adapters: how long ``AdapterRegistry.scan`` takes (the part
of ``loraplex serve``'s start that reads the store) over N stored adapters, warm (files in the page
cache) and cold (each file dropped from the page cache first with ``posix_fadvise``, no root);
and, for comparison, what only re-hashing every stored weights file would cost (the alternative
to trusting the store's record of an unchanged file: ``adapters/stored.py``).

The store is filled the way uploads fill it (``AdapterRegistry.register``), so its metadata is
what a real server writes. Usage::

    PYTHONPATH=$PWD/server python bench/store_startup.py --count 40 --rank 32

Default shapes: SmolLM2-135M's projections (30 layers; all seven targets; float16), so rank 32
is 19.5 MB per adapter.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from adapter_store import ALL_SEVEN, MLP, projection_shapes, write_adapter

from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import Limits
from loraplex.adapters.store import LocalAdapterStore
from loraplex.paths import cache_root


def module_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """``model.layers.N.<part>.<target>`` -> (in, out) for every projection of the model."""
    layers, shapes = projection_shapes(model_dir)
    return {
        f"model.layers.{i}.{'mlp' if t in MLP else 'self_attn'}.{t}": shapes[t]
        for i in range(layers)
        for t in ALL_SEVEN
    }


def drop_page_cache(root: Path) -> None:
    """Ask the kernel to forget every file under ``root`` (clean pages only: fsynced files)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: SmolLM2's")
    args = parser.parse_args()
    model_dir = args.model_dir or next((cache_root() / "models").iterdir())
    shapes = module_shapes(model_dir)
    check = functools.partial(
        check_folder, limits=Limits(max_rank=args.rank), served_model="", module_shapes=shapes
    )
    with tempfile.TemporaryDirectory(prefix="store-startup-") as tmp:
        sources, store = Path(tmp) / "sources", Path(tmp) / "store"
        registry = AdapterRegistry(LocalAdapterStore(store), torch.float32, check, 1)
        for i in range(args.count):
            folder = sources / f"a{i:03d}"
            write_adapter(folder, model_dir, args.rank, ALL_SEVEN, seed=i)
            registry.register(f"t{i % 4}/a{i:03d}", folder)
            registry.host.discard(registry.cards()[-1].key)
        registry.close()
        size = sum(p.stat().st_size for p in store.rglob("*.safetensors"))
        print(f"{args.count} adapters, rank {args.rank}, {size / 2**20:.0f} MiB of weights")
        for mode in ("warm", "cold"):
            times = []
            for _ in range(args.repeats):
                if mode == "cold":
                    drop_page_cache(store)
                fresh = AdapterRegistry(LocalAdapterStore(store), torch.float32, check, 1)
                start = time.perf_counter()
                names = fresh.scan()
                times.append(time.perf_counter() - start)
                fresh.close()
                assert len(names) == args.count and not fresh.refused(), fresh.refused()
            print(f"scan ({mode}): median {statistics.median(times):.3f} s of {times}")
            times = []
            for _ in range(args.repeats):
                if mode == "cold":
                    drop_page_cache(store)
                start = time.perf_counter()
                for path in sorted(store.rglob("*.safetensors")):
                    hashlib.sha256(path.read_bytes()).hexdigest()
                times.append(time.perf_counter() - start)
            print(f"re-hash only ({mode}): median {statistics.median(times):.3f} s of {times}")


if __name__ == "__main__":
    main()
