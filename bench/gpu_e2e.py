"""bench/gpu.py section 3: decode end to end on a dummy Llama-3-8B-shaped model.

One model runner (random weights, ``max_loras`` slots of rank 16 on all seven projections, all
slots filled with random adapters once); each run prefills ``seqs`` prompts (packed batches),
then times decode steps of all of them at once the way the engine runs them: one fill of the
persistent decode buffers (one host->device copy), the forward (eager, or the replay of a CUDA
graph captured for the batch size), the greedy tokens back to the host (the one device->host
copy of a step). Base-only and 1, 16, 64 distinct adapters run on the same runner with the
Triton backends eager and with CUDA graphs (CUDA only), and for reference with the torch ones.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    seqs: int
    prompt: int
    decode_steps: int
    warmup_steps: int
    adapter_counts: tuple[int, ...]
    prefill_seqs_per_step: int


FULL = Shape(64, 128, 32, 4, (0, 1, 16, 64), 16)
SMOKE = Shape(4, 8, 2, 1, (0, 2), 4)
RANK = 16


@dataclass
class Run:
    backends: str  # "triton", "torch", or "triton+graphs" (the replayed CUDA graphs)
    adapters: int
    tokens_per_s: float
    itl_ms: float  # median decode step = inter-token latency of every sequence


def _runner(
    device: torch.device,
    dtype: str,
    slots: int,
    shape: Shape,
    folder: Path,
    quantization: str | None = None,
):
    """A runner with random weights (quantized at load with ``quantization``) and room in its
    cache for every sequence of a run."""
    from loraplex.config import CacheConfig, LoRAConfig, ModelConfig
    from loraplex.engine.runner.model_runner import ModelRunner

    blocks_per_seq = -(-(shape.prompt + shape.decode_steps + shape.warmup_steps + 1) // 16)
    return ModelRunner(
        str(folder),
        ModelConfig(
            model=str(folder),
            dtype=dtype,
            device=str(device),
            load_format="dummy",
            quantization=quantization,
        ),
        CacheConfig(block_size=16, num_blocks=shape.seqs * blocks_per_seq + 1),
        LoRAConfig(max_loras=slots, max_lora_rank=RANK, kernel="torch"),
    ), blocks_per_seq


def _model_folder(smoke: bool, scratch: Path) -> Path:
    from loraplex.engine.model.dummy import builtin_dummy_folder

    if not smoke:
        return builtin_dummy_folder()
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=224,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=256,
    )
    config.save_pretrained(scratch / "tiny-llama-config")
    return scratch / "tiny-llama-config"


def _run(runner, decode, blocks_per_seq: int, shape: Shape, adapters: int, label: str) -> Run:
    from loraplex.engine.request.params import SamplingParams
    from loraplex.engine.request.sequence import Sequence
    from loraplex.engine.runner.batch import build_batch
    from loraplex.engine.sched.scheduler import ScheduledSeq

    slots = runner.lora.num_slots
    slot_of = {f"a{i}": i for i in range(slots)}
    generator = torch.Generator().manual_seed(adapters)
    vocab = runner.model.config.get_text_config().vocab_size
    seqs = []
    for i in range(shape.seqs):
        prompt = torch.randint(vocab, (shape.prompt,), generator=generator).tolist()
        adapter = f"a{i % adapters}" if adapters else None
        seq = Sequence(str(i), prompt, SamplingParams(), adapter=adapter)
        seq.block_table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
        seqs.append(seq)

    def step(scheduled: list[ScheduledSeq]) -> None:
        if decode.eligible(scheduled):
            stepped, logits = decode.run(scheduled, slot_of)
        else:
            batch = build_batch(scheduled, slot_of, 16, slots, runner.device)
            stepped, logits = batch.sample_seqs, runner.forward(batch)
        tokens = logits.argmax(-1).tolist()
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        for seq, token in zip(stepped, tokens, strict=True):
            seq.append_token(token)

    per_step = shape.prefill_seqs_per_step
    for start in range(0, shape.seqs, per_step):
        step([ScheduledSeq(s, shape.prompt) for s in seqs[start : start + per_step]])
    times = []
    for i in range(shape.warmup_steps + shape.decode_steps):
        begin = time.perf_counter()
        step([ScheduledSeq(s, 1) for s in seqs])
        if i >= shape.warmup_steps:
            times.append(time.perf_counter() - begin)
    return Run(
        label, adapters, shape.seqs * len(times) / sum(times), statistics.median(times) * 1e3
    )


def e2e_runs(device: torch.device, dtype: str, smoke: bool) -> list[Run]:
    from loraplex.engine.attention.select import select_attention
    from loraplex.engine.model.dummy import random_adapter
    from loraplex.engine.runner.decode_runner import DecodeRunner
    from loraplex.lora.ops import select_add_lora

    shape = SMOKE if smoke else FULL
    slots = max(shape.adapter_counts)
    with tempfile.TemporaryDirectory() as scratch:
        folder = _model_folder(smoke, Path(scratch))
        runner, blocks_per_seq = _runner(device, dtype, slots, shape, folder)
    shapes = {n: (m.in_features, m.out_features) for n, m in runner.lora.layers.items()}
    for slot in range(slots):  # drawn on the device, one at a time (each is ~84 MB in bf16)
        adapter = random_adapter(
            f"a{slot}", shapes, RANK, TARGETS, seed=slot, dtype=runner.dtype, device=device
        )
        runner.lora.load_slot(slot, adapter)
        del adapter
    runner.lora.wait_for_slots(range(slots))  # the copies run on a side stream
    backends = {
        name: (
            select_add_lora(name, device, runner.dtype, Path(tempfile.gettempdir()), RANK)[1],
            select_attention(name, device)[1],
        )
        for name in ("triton", "torch")
    }
    max_len = blocks_per_seq * 16
    runs = []
    with torch.inference_mode():
        for name, (add_lora, attend) in backends.items():
            runner.lora.context.add_lora, runner.attend = add_lora, attend
            runner.backends = (name, name)
            counts = shape.adapter_counts if name == "triton" else (0, slots)
            modes = [False, True] if name == "triton" and device.type == "cuda" else [False]
            for graphs in modes:  # graphs: captured for every padded size up to ``seqs``
                decode = DecodeRunner(runner, shape.seqs, max_len, graphs=graphs)
                if graphs and decode.graphs is None:  # keep the eager runs: report, go on
                    print("CUDA graph capture failed (logged above): graphs not measured")
                    continue
                label = f"{name}+graphs" if graphs else name
                for adapters in counts:
                    runs.append(_run(runner, decode, blocks_per_seq, shape, adapters, label))
                del decode
    return runs
