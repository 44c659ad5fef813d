"""Weights load straight onto the device through a ``device_map``; the CPU loads as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import save_tiny_model
from transformers import AutoModelForCausalLM

from loraplex.engine.model.loading import (
    accelerate_installed,
    load_pretrained,
    weights_device_map,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("loading") / "model")


def _same_weights(left: torch.nn.Module, right: torch.nn.Module) -> None:
    ours, theirs = left.state_dict(), right.state_dict()
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype, name
        assert torch.equal(tensor.cpu(), theirs[name].cpu()), name


def test_the_cpu_loads_on_the_host_without_a_device_map(model_dir: Path) -> None:
    cpu = torch.device("cpu")
    assert weights_device_map(cpu, accelerate=True) is None
    model = load_pretrained(str(model_dir), torch.float32, cpu, "sdpa")
    _same_weights(model, AutoModelForCausalLM.from_pretrained(model_dir))


def test_a_gpu_gets_a_device_map_when_accelerate_is_there(caplog) -> None:
    cuda = torch.device("cuda", 0)  # a device object needs no GPU
    assert weights_device_map(cuda, accelerate=True) == {"": cuda}
    with caplog.at_level("WARNING", logger="loraplex.engine.model.loading"):
        assert weights_device_map(cuda, accelerate=False) is None
    assert "accelerate is not installed" in caplog.text


@pytest.mark.skipif(not accelerate_installed(), reason="accelerate is not installed")
def test_the_device_map_path_loads_the_same_weights(model_dir: Path) -> None:
    """The very call a GPU makes (``from_pretrained(..., device_map={"": device})``), aimed at
    the CPU, gives transformers' plain load bit for bit, in the requested dtype."""
    cpu = torch.device("cpu")
    mapped = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": cpu}
    )
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert {p.device for p in mapped.parameters()} == {cpu}
    _same_weights(mapped, plain)


@pytest.mark.gpu
@needs_cuda
def test_weights_land_on_the_gpu_without_a_host_copy(model_dir: Path) -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    model = load_pretrained(str(model_dir), torch.bfloat16, device, "sdpa")
    assert {p.device for p in model.parameters()} == {device}
    _same_weights(model, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16))
