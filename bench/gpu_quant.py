"""bench/gpu.py section 4: the Llama-3-8B-shaped dummy model as an NF4 base against bf16.

The same random weights are drawn in bf16 on the device and, for the NF4 runner, quantized there
as they would be at load (``--load-format dummy --quantization bitsandbytes``: bitsandbytes
NF4, computing in bf16). For each base it measures the weight bytes by format, the device
memory held after loading, and the KV-cache budget ``--gpu-memory-utilization 0.9`` leaves
(what the smaller weights buy: more blocks, more concurrent sequences). The NF4 base then runs
section 3's decode measurement (64 sequences, base-only and 16 adapters of rank 16 on all
seven projections, Triton backends eager and with CUDA graphs), so its rows compare with the
bf16 rows of section 3 in the same report. Needs bitsandbytes on the device machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from pathlib import Path

import torch
from gpu_e2e import FULL, RANK, SMOKE, TARGETS, Run, _model_folder, _run, _runner

UTILIZATION = 0.9


@dataclasses.dataclass
class Memory:
    base: str  # "bfloat16" or "nf4"
    weight_bytes: dict[str, int]  # by storage format
    allocated_bytes: int  # device memory held once loaded (0 off CUDA)
    kv_budget_bytes: int  # the KV cache's share at UTILIZATION (0 off CUDA)


def _memory(runner, base: str, tokens: int) -> Memory:
    from loraplex.engine.runner.model_runner import device_kv_cache_bytes

    if runner.device.type != "cuda":
        return Memory(base, dict(runner.weight_bytes), 0, 0)
    torch.cuda.synchronize()
    budget = device_kv_cache_bytes(
        runner.device,
        runner.model.config,
        UTILIZATION,
        tokens,
        runner.dtype,
        runner.largest_dequantized(),
    )
    return Memory(base, dict(runner.weight_bytes), torch.cuda.memory_allocated(), budget)


def nf4_runs(device: torch.device, dtype: str, smoke: bool) -> tuple[list[Run], list[Memory]]:
    """(the NF4 base's decode runs, the memory of both bases)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("bitsandbytes is not installed: pip install 'loraplex[quant]'")
    from loraplex.engine.attention.select import select_attention
    from loraplex.engine.model.dummy import random_adapter
    from loraplex.engine.runner.decode_runner import DecodeRunner
    from loraplex.lora.ops import select_add_lora

    shape = dataclasses.replace(SMOKE if smoke else FULL, adapter_counts=(0, 2 if smoke else 16))
    slots = max(shape.adapter_counts)
    tokens = 8192  # the GPU's default --max-num-batched-tokens
    memory = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = _model_folder(smoke, Path(scratch))
        runner, _ = _runner(device, dtype, slots, shape, folder)
        memory.append(_memory(runner, dtype, tokens))
        del runner  # one 8B model on the device at a time
        if device.type == "cuda":
            torch.cuda.empty_cache()
        runner, blocks_per_seq = _runner(device, dtype, slots, shape, folder, "bitsandbytes")
        memory.append(_memory(runner, "nf4", tokens))
    shapes = {n: (m.in_features, m.out_features) for n, m in runner.lora.layers.items()}
    for slot in range(slots):
        adapter = random_adapter(
            f"a{slot}", shapes, RANK, TARGETS, seed=slot, dtype=runner.dtype, device=device
        )
        runner.lora.load_slot(slot, adapter)
    runner.lora.wait_for_slots(range(slots))
    add_lora = select_add_lora("triton", device, runner.dtype, Path(tempfile.gettempdir()), RANK)
    runner.lora.context.add_lora, runner.attend = add_lora[1], select_attention("triton", device)[1]
    runner.backends = ("triton", "triton")
    runs = []
    with torch.inference_mode():
        for graphs in [False, True] if device.type == "cuda" else [False]:
            decode = DecodeRunner(runner, shape.seqs, blocks_per_seq * 16, graphs=graphs)
            if graphs and decode.graphs is None:
                print("CUDA graph capture failed on the NF4 base (logged above): not measured")
                continue
            label = "nf4-triton+graphs" if graphs else "nf4-triton"
            for adapters in shape.adapter_counts:
                runs.append(_run(runner, decode, blocks_per_seq, shape, adapters, label))
            del decode
    return runs, memory


def markdown(runs: list[dict], memory: list[dict], e2e: list[dict]) -> list[str]:
    """The NF4 section of gpu.md: memory of both bases, then NF4 decode beside bf16's."""
    gib = 2**30
    lines = ["| base | weights by format (GiB) | device memory GiB | KV budget GiB |",
             "|---|---|---:|---:|"]  # fmt: skip
    for m in memory:
        formats = ", ".join(f"{f} {n / gib:.2f}" for f, n in sorted(m["weight_bytes"].items()))
        lines.append(
            f"| {m['base']} | {formats} | {m['allocated_bytes'] / gib:.1f} | "
            f"{m['kv_budget_bytes'] / gib:.1f} |"
        )
    bf16 = {(r["backends"], r["adapters"]): r["tokens_per_s"] for r in e2e}
    lines += ["", "| NF4 backends | adapters | decode tok/s | ITL ms | vs bf16 (section 3) |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in runs:
        same = bf16.get((r["backends"].removeprefix("nf4-"), r["adapters"]))
        ratio = f"{r['tokens_per_s'] / same:.2f}x" if same else ""
        lines.append(
            f"| {r['backends']} | {r['adapters']} | {r['tokens_per_s']:.0f} | "
            f"{r['itl_ms']:.1f} | {ratio} |"
        )
    return [*lines, ""]
