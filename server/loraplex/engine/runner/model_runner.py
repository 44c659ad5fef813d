"""Loads the base model once and runs each step's forward: :meth:`ModelRunner.execute` picks
the decode buffers (CUDA graphs where captured) or one packed batch."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from loraplex.config import CacheConfig, LoRAConfig, ModelConfig
from loraplex.engine.attention.metadata import AttentionMetadata
from loraplex.engine.attention.paged import FORWARD, register_paged_attention
from loraplex.engine.attention.select import select_attention
from loraplex.engine.model.base import load_base
from loraplex.engine.model.layers import layer_windows
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import PackedBatch, build_batch
from loraplex.engine.runner.huge_pages import huge_zeros, move_to_huge_pages
from loraplex.engine.runner.memory_sizing import activation_reserve_bytes, kv_cache_bytes
from loraplex.engine.sched.scheduler import ScheduledSeq
from loraplex.lora.manager import LoRAModelManager, padded_rank
from loraplex.lora.ops import LoRAMeta, select_add_lora
from loraplex.paths import kernel_cache

if TYPE_CHECKING:
    from loraplex.engine.runner.decode_runner import DecodeRunner

log = logging.getLogger(__name__)


@dataclass
class Executed:
    """One step's forward: ``seqs`` sample, in row order (N); ``prompt_targets[m]`` is the
    (sequence, prompt token) that logits row ``N + m`` scores (usually none); ``logits``
    [N + M, vocab] float32."""

    seqs: list[Sequence]
    prompt_targets: list[tuple[Sequence, int]]
    logits: torch.Tensor


@dataclass(frozen=True)
class KVLayout:
    """Per-layer cache shape: ``num_blocks * block_size`` rows of [kv_heads, head_dim]."""

    num_layers: int
    kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int


def kv_layout(
    model_config, cache: CacheConfig, dtype: torch.dtype, memory_bytes: int | None = None
) -> KVLayout:
    """Size the block pool (keys and values of every layer) from ``memory_bytes``, by default
    ``kv_cache_memory_mb``; ``num_blocks`` overrides both."""
    text = model_config.get_text_config()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    layers = text.num_hidden_layers
    bytes_per_block = 2 * layers * cache.block_size * kv_heads * head_dim * dtype.itemsize
    memory = cache.kv_cache_memory_mb * 2**20 if memory_bytes is None else memory_bytes
    num_blocks = cache.num_blocks or max(1, memory // bytes_per_block)
    return KVLayout(layers, kv_heads, head_dim, cache.block_size, num_blocks)


def prepack_output_projection(model: torch.nn.Module) -> bool:
    """On a CPU in float32, run the vocabulary projection through oneDNN with its weight
    prepacked once: at decode batch sizes it is the largest single GEMM of a small model
    ([N, hidden] x [hidden, vocab]) and oneDNN's blocked layout runs it ~1.5x faster than the
    plain GEMM here. Tied embeddings keep their own (unpacked) copy for the input side.
    """
    head = model.get_output_embeddings()
    usable = (
        type(head) is torch.nn.Linear
        and head.weight.device.type == "cpu"
        and head.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
    )
    if usable:
        model.set_output_embeddings(PrepackedLinear(head))
    return usable


class PrepackedLinear(torch.nn.Module):
    """``y = x·Wᵀ (+ b)`` with W held in oneDNN's blocked layout (inference only)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", linear.weight.detach().to_mkldnn(), persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to_mkldnn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._C._nn.mkldnn_linear(x.to_mkldnn(), self.packed, self.bias).to_dense()


def device_kv_cache_bytes(
    device: torch.device,
    model_config,
    utilization: float,
    tokens: int,
    dtype: torch.dtype,
    dequantized: int = 0,
) -> int:
    """The KV cache's share of a CUDA device, measured now (weights and slot tables loaded);
    ``dequantized``: bytes of the largest quantized projection in ``dtype`` (0: float base)."""
    torch.cuda.empty_cache()  # the allocator's cached, unused blocks count as free
    free, total = torch.cuda.mem_get_info(device)
    text = model_config.get_text_config()
    width = text.hidden_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * width
    reserve = activation_reserve_bytes(
        tokens, width, intermediate, text.vocab_size, dtype.itemsize, dequantized
    )
    return kv_cache_bytes(total, free, utilization, reserve)


class ModelRunner:
    """The frozen base model with LoRA layers installed, its paged KV cache, and the forward."""

    def __init__(
        self,
        path: str,
        model: ModelConfig,
        cache: CacheConfig,
        lora: LoRAConfig,
        *,
        step_tokens: int | None = None,
    ) -> None:
        """``step_tokens``: the most tokens one forward packs (--max-num-batched-tokens), which
        sizes the activation reserve on a GPU; None: ``max_model_len``."""
        self.device = torch.device(model.device)
        self.dtype = getattr(torch, model.dtype)
        attn = register_paged_attention()
        base = load_base(path, model, self.dtype, self.device, attn)
        self.model, self.quantization = base.model, base.quantization
        self.tokenizer: PreTrainedTokenizerBase = base.tokenizer
        self.weight_bytes = base.weight_bytes  # by storage format: loraplex_model_weight_bytes
        prepack_output_projection(self.model)
        table_dtype = getattr(torch, lora.table_dtype(model.dtype))
        kernel, op = select_add_lora(
            lora.kernel,
            self.device,
            self.dtype,
            kernel_cache(),
            padded_rank(lora.max_lora_rank),
            table_dtype,
        )
        log.info("add_lora backend: %s, slot tables in %s", kernel, table_dtype)
        backend, self.attend = select_attention(model.attention_backend, self.device)
        # Each layer's sliding window by the config (transformers' arguments may lack it).
        self.windows = layer_windows(self.model.config)
        log.info("attention backend: %s", backend)
        self.backends = (kernel, backend)  # (add_lora, attention): CUDA graphs need both triton
        self.lora = LoRAModelManager(
            self.model, lora.max_loras, lora.max_lora_rank, op, table_dtype
        )
        host_huge_pages = model.huge_pages and self.device.type == "cpu"
        if host_huge_pages:  # after the LoRA layers, so their slot tables move too
            move_to_huge_pages(self.model)
        memory = None  # on a GPU, the cache takes what --gpu-memory-utilization leaves
        if self.device.type == "cuda" and cache.num_blocks is None:
            memory = device_kv_cache_bytes(
                self.device,
                self.model.config,
                cache.gpu_memory_utilization,
                step_tokens or model.max_model_len,
                self.dtype,
                self.largest_dequantized(),
            )
        self.layout = kv_layout(self.model.config, cache, self.dtype, memory)
        # Two blocks past the pool, never handed out: padded decode rows write their keys to
        # the scratch block; the last (null) block is never written, so its zero rows are what
        # the reference attention reads at masked key positions (``attention/sdpa.py``).
        self.scratch_block = self.layout.num_blocks
        rows = (self.layout.num_blocks + 2) * self.layout.block_size
        shape = (rows, self.layout.kv_heads, self.layout.head_dim)

        def zeros() -> torch.Tensor:
            if host_huge_pages:
                return huge_zeros(shape, self.dtype)
            return torch.zeros(shape, dtype=self.dtype, device=self.device)

        self.kv_caches = [(zeros(), zeros()) for _ in range(self.layout.num_layers)]
        # Pure-decode steps: persistent buffers, CUDA graphs where they can be captured. Set by
        # ``build_engine`` once the context length is known (decode_runner.decode_runner_for).
        self.decode: DecodeRunner | None = None
        log.info(
            "KV cache: %d blocks of %d tokens (%.0f MiB)",
            self.layout.num_blocks,
            self.layout.block_size,
            2 * sum(k.numel() * k.element_size() for k, _ in self.kv_caches) / 2**20,
        )

    @property
    def base_format(self) -> str:
        """How the base projections are stored: ``bitsandbytes-nf4``, ``gptq`` ..., or the
        float dtype (what adapters are checked against, shown on their cards)."""
        dtype = str(self.dtype).removeprefix("torch.")
        return dtype if self.quantization is None else self.quantization.name

    def largest_dequantized(self) -> int:
        """Bytes of the largest projection dequantized in the compute dtype (float base: 0)."""
        if self.quantization is None:
            return 0
        sizes = (i * o for i, o in self.lora.module_shapes().values())
        return max(sizes, default=0) * self.dtype.itemsize

    def clear_blocks(self, blocks: list[int]) -> None:
        """Zero the keys and values of ``blocks`` in every layer (a failed sequence's blocks,
        before the pool hands them out again)."""
        if not blocks:
            return
        size = self.layout.block_size
        rows = torch.tensor(blocks)[:, None] * size + torch.arange(size)
        rows = rows.view(-1).to(self.device)
        for key_cache, value_cache in self.kv_caches:
            key_cache.index_fill_(0, rows, 0.0)
            value_cache.index_fill_(0, rows, 0.0)

    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's EOS plus every EOS id in the generation config (chat models often
        end turns with a token other than the tokenizer's EOS)."""
        ids = {self.tokenizer.eos_token_id}
        generation = getattr(self.model, "generation_config", None)
        extra = getattr(generation, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        return frozenset(i for i in ids if i is not None)

    @property
    def max_position_embeddings(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def execute(self, scheduled: list[ScheduledSeq], slot_of: dict[str, int]) -> Executed:
        """Run the step's scheduled chunks (``slot_of``: adapter key -> device slot): through
        the decode buffers when every sequence feeds one token and samples, else packed into
        one batch. Nothing is recorded, so a failed call can be retried (same KV rows)."""
        if self.decode is not None and self.decode.eligible(scheduled):
            seqs, logits = self.decode.run(scheduled, slot_of)
            return Executed(seqs, [], logits)
        block_size, slots = self.layout.block_size, self.lora.num_slots
        batch = build_batch(scheduled, slot_of, block_size, slots, self.device)
        return Executed(batch.sample_seqs, batch.prompt_targets, self.forward(batch))

    @torch.inference_mode()
    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Run the packed batch; returns float32 logits [N + M, vocab]: at ``batch.sample_rows``
        (N), then at ``batch.prompt_rows`` (M, usually none)."""
        keep = batch.sample_rows
        if batch.prompt_rows is not None:
            keep = torch.cat([batch.sample_rows, batch.prompt_rows])
        return self.run_model(
            batch.input_ids, batch.position_ids, batch.attention, batch.lora, batch.merged, keep
        )

    @torch.inference_mode()
    def run_model(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention: AttentionMetadata,
        lora: LoRAMeta | None,
        merged: tuple[str, int] | None = None,
        logits_to_keep: torch.Tensor | int = 0,
    ) -> torch.Tensor:
        """One forward over packed rows (input_ids, position_ids [1, T]) -> float32 logits
        [K, vocab] at ``logits_to_keep`` (0: every row). No host sync and no branch on tensor
        data, so a pure-decode call over persistent buffers can be captured as a CUDA graph."""
        FORWARD.kv_caches = self.kv_caches
        FORWARD.windows = self.windows
        FORWARD.metadata = attention
        FORWARD.attend = self.attend
        self.lora.set_step(lora, merged)
        try:
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=logits_to_keep,
            )
        finally:
            FORWARD.metadata = None
            self.lora.set_step(None, None)
        return out.logits[0].float()
