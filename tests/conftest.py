"""Shared fixtures: a tiny random Llama with its own tokenizer, a PEFT adapter on it, and live
uvicorn servers on loopback ports.

The model is random but real (transformers' LlamaForCausalLM, saved with save_pretrained), so the
whole stack runs end to end in seconds on a laptop CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Triton kernels run on CPU tensors under Triton's interpreter, which triton reads when it is
# first imported: set it before any test can import it (a CUDA machine runs them for real).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig

TINY_MODEL_NAME = "tiny-llama"
TINY_ADAPTER_NAME = "tiny-a"
EOS_TOKEN = "<|endoftext|>"

_CORPUS = [
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adds a low-rank update to a frozen weight matrix.",
    "Many adapters can share one base model in the same batch.",
    "Hello world! Tokens stream back one at a time.",
    "What is the capital of France? Paris is the capital of France.",
]


def _build_tokenizer():  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on a few sentences: every string is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random 2-layer Llama (hidden 64, GQA 4/2 heads) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("models") / TINY_MODEL_NAME
    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_adapters_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapter store holding one PEFT LoRA (r=4, q/v projections, random A and B) named tiny-a.

    ``init_lora_weights=False`` leaves B non-zero, so the adapter visibly changes the output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    adapters = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, lora).save_pretrained(adapters / TINY_ADAPTER_NAME)
    return adapters


@pytest.fixture(scope="session")
def tiny_adapter_name() -> str:
    """Name of the one adapter in :func:`tiny_adapters_dir`."""
    return TINY_ADAPTER_NAME


@pytest.fixture(scope="session")
def tiny_config(tiny_model_dir: Path, tiny_adapters_dir: Path) -> Config:
    """A small-footprint Config serving the tiny model and its adapter store.

    Vary it with ``dataclasses.replace`` (e.g. a ``ServerConfig`` with an ``api_key``).
    """
    return Config(
        model=ModelConfig(
            model=str(tiny_model_dir), served_model_name=TINY_MODEL_NAME, max_model_len=256
        ),
        cache=CacheConfig(block_size=16, num_blocks=128),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256),
        lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(tiny_adapters_dir)),
    )


@pytest.fixture(scope="module")
def server_factory() -> Iterator[Callable[..., str]]:
    """A function ``start(config, engine=None) -> base_url`` serving ``create_app(config,
    engine)``; every server it started stops when the module's tests are done."""
    from loraplex.api.app import create_app
    from loraplex.api.threaded_server import ThreadedServer

    servers: list[ThreadedServer] = []

    def start(config: Config, engine: object | None = None) -> str:
        server = ThreadedServer(create_app(config, engine))  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def live_server(server_factory: Callable[..., str], tiny_config: Config) -> str:
    """Base URL (``http://127.0.0.1:PORT``, no ``/v1``) of a server for the tiny model."""
    return server_factory(tiny_config)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of many tiny forwards: on a shared 2-core machine
    OpenMP's spinning second thread makes a 64-wide matmul ~1000x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
