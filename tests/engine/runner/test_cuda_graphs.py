"""CUDA graphs of decode steps: when they are captured, and (on a GPU) that replays give the
eager forward's logits for any adapter mix, including an adapter loaded after the capture."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, save_tiny_model
from engine_helpers import run, save_store

from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import load_adapter
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.cuda_graphs import graphs_unavailable
from loraplex.engine.runner.decode_runner import DecodeRunner
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.scheduler import ScheduledSeq

BLOCK = 4
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a CUDA device and triton",
)
ADAPTERS = {
    "attn": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "all": {"r": 8, "lora_alpha": 16, "target_modules": ALL_SEVEN},
    "late": {"r": 2, "lora_alpha": 4, "target_modules": ["o_proj", "up_proj"]},
}


def test_graphs_are_captured_only_on_cuda_with_both_triton_backends() -> None:
    triton = ("triton", "triton")
    assert graphs_unavailable(CUDA, triton, enforce_eager=False) is None
    assert "CUDA device" in graphs_unavailable(torch.device("cpu"), triton, False)
    assert graphs_unavailable(CUDA, triton, enforce_eager=True) == "--enforce-eager"
    assert "both Triton" in graphs_unavailable(CUDA, ("torch", "triton"), False)
    assert "both Triton" in graphs_unavailable(CUDA, ("triton", "torch"), False)


def test_the_cpu_engine_runs_decode_eagerly_without_padding(tmp_path: Path) -> None:
    model_dir = save_tiny_model(tmp_path / "model")
    engine = build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=32),
            cache=CacheConfig(block_size=BLOCK, num_blocks=16),
            lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(tmp_path / "none")),
        )
    )
    assert engine.runner.decode.graphs is None and not engine.runner.decode.pad


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_store(tmp_path_factory.mktemp("graphs"), ADAPTERS)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_replays_equal_the_eager_forward_for_every_adapter_mix(store, dtype: str) -> None:
    model_dir, adapters = store
    runner = ModelRunner(
        str(model_dir),
        ModelConfig(model=str(model_dir), dtype=dtype, device="cuda", attention_backend="triton"),
        CacheConfig(block_size=BLOCK, num_blocks=64),
        LoRAConfig(max_loras=4, max_lora_rank=8, kernel="triton"),
    )
    assert runner.backends == ("triton", "triton")
    shapes, limits = runner.lora.module_shapes(), Limits(max_rank=8)
    loaded = {n: load_adapter(n, adapters / n, shapes, limits=limits) for n in ADAPTERS}
    runner.lora.load_slot(0, loaded["attn"])
    runner.lora.load_slot(1, loaded["all"])
    graphs = DecodeRunner(runner, max_num_seqs=8, max_model_len=64, graphs=True)
    eager = DecodeRunner(runner, max_num_seqs=8, max_model_len=64, pad=True)
    assert graphs.graphs is not None and sorted(graphs.graphs.graphs) == [1, 2, 4, 8]
    runner.lora.load_slot(2, loaded["late"])  # after the capture: read by the replays
    slot_of = {"attn": 0, "all": 1, "late": 2}
    seqs = []
    for i in range(6):
        seq = Sequence(str(i), [3 + i, 4, 5, 6 + i], SamplingParams())
        seq.block_table = [2 * i, 2 * i + 1, 40 + i]
        seqs.append(seq)
    mixes = [
        ["attn", "all", None, "late", "attn", None],  # 6 rows: padded to 8
        [None] * 3,  # base only: padded to 4
        ["late"],
        ["all", "all", "late", "late", None],
    ]
    tolerance = {"float32": 1e-4, "bfloat16": 3e-2}[dtype]
    for position, mix in enumerate(mixes, start=4):
        step = seqs[: len(mix)]
        for seq, adapter in zip(step, mix, strict=True):  # feed token 7 at ``position``
            seq.adapter = adapter
            seq.token_ids = seq.token_ids[:4] + [7] * (position - 3)
            seq.num_computed_tokens = position
        scheduled = [ScheduledSeq(s, 1) for s in step]
        got_seqs, replayed = graphs.run(scheduled, slot_of)
        replayed = replayed.clone()
        want_seqs, expected = eager.run(scheduled, slot_of)  # rewrites the same KV rows
        assert got_seqs == want_seqs
        torch.testing.assert_close(replayed, expected, atol=tolerance, rtol=tolerance)
    assert graphs.graphs.captured(8) and not eager.graphs


@pytest.mark.gpu
@needs_cuda
def test_the_engine_gives_the_same_greedy_tokens_with_graphs_and_eager(store) -> None:
    model_dir, adapters = store

    def engine(enforce_eager: bool):
        return build_engine(
            Config(
                model=ModelConfig(
                    model=str(model_dir),
                    max_model_len=64,
                    device="cuda",
                    attention_backend="triton",
                    enforce_eager=enforce_eager,
                ),
                cache=CacheConfig(block_size=BLOCK, num_blocks=64),
                scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
                lora=LoRAConfig(
                    max_loras=3, max_lora_rank=8, adapters_dir=str(adapters), kernel="triton"
                ),
            )
        )

    requests = [([5, 6, 7, 8], "attn"), ([3, 4, 5], None), (list(range(20, 28)), "all")]
    requests += [([30, 31], "late"), ([50, 51, 52], "all")]
    params = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}
    with_graphs = engine(False)
    assert with_graphs.runner.decode.graphs is not None and with_graphs.runner.decode.pad
    eager = engine(True)
    assert eager.runner.decode.graphs is None
    assert run(with_graphs, requests, **params) == run(eager, requests, **params)


class FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on the CPU: a replay reruns what was captured
    into the captured output tensor (what a real replay does to its static output)."""

    def __init__(self) -> None:
        self.run = None

    def pool(self) -> tuple[str, int]:
        return ("pool", id(self))

    def replay(self) -> None:
        self.run()


def test_sizes_are_captured_largest_first_into_one_pool_and_replays_refresh_the_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loraplex.engine.runner import cuda_graphs

    pools, calls, layers = [], [], []
    buffer = torch.arange(8.0)

    def forward(size: int) -> torch.Tensor:
        calls.append(size)
        layers.append(every[0])
        return buffer[:size] * 2

    @contextmanager
    def capture(graph: FakeGraph, pool=None, capture_error_mode: str = "global"):
        pools.append(pool)
        start = len(calls)
        yield
        size = calls[start]
        graph.run = lambda: graphs.outputs[size].copy_(forward(size))

    every = [False]
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(cuda_graphs, "MAX_CAPTURE_SIZE", 4)
    prepared: list[int] = []
    graphs = cuda_graphs.DecodeGraphs(
        forward, [1, 2, 4, 8], prepared.append, lambda on: every.__setitem__(0, on)
    )
    assert prepared == [4, 2, 1] and sorted(graphs.graphs) == [1, 2, 4]
    assert calls == [4] * 3 + [2] * 3 + [1] * 3  # two warm-ups, then the capture
    assert pools[0] is None and pools[1] == pools[2] == graphs.graphs[4].pool()
    assert all(layers) and not every[0]  # every LoRA layer called during capture only
    assert not graphs.captured(8)  # above MAX_CAPTURE_SIZE: eager
    buffer += 1  # the next step's inputs, written in place
    out = graphs.replay(2)
    assert out is graphs.outputs[2] and out.tolist() == [2.0, 4.0]
