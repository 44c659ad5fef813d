"""Pure-decode steps through the persistent buffers, replayed from CUDA graphs where captured.

Every step in which each sequence feeds one token (``decode_inputs.is_pure_decode``) runs here
instead of through ``batch.build_batch``: one host->device copy fills the buffers, then either a
captured graph replays (CUDA, both Triton backends, not ``--enforce-eager``) or the same
forward runs eagerly (the CPU, the torch backends). With graphs the batch is padded to the next
captured size; without them padding would only cost rows, so it is off unless asked for.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING

import torch

from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.cuda_graphs import DecodeGraphs, graphs_unavailable
from loraplex.engine.runner.decode_inputs import DecodeInputs, is_pure_decode, padded_sizes
from loraplex.engine.sched.scheduler import ScheduledSeq

if TYPE_CHECKING:  # the runner owns its decode runner: no import back at run time
    from loraplex.engine.runner.model_runner import ModelRunner

log = logging.getLogger(__name__)


class DecodeRunner:
    """The decode path of one model runner: buffers sized for ``max_num_seqs`` sequences of up
    to ``max_model_len`` tokens; ``graphs`` captures them (CUDA); ``pad`` pads every step to a
    size of :func:`padded_sizes` (default: when graphs are captured)."""

    def __init__(
        self,
        runner: ModelRunner,
        max_num_seqs: int,
        max_model_len: int,
        graphs: bool = False,
        pad: bool | None = None,
    ) -> None:
        layout = runner.layout
        self.runner = runner
        self.max_model_len = max_model_len
        self.inputs = DecodeInputs(
            max_num_seqs,
            -(-max_model_len // layout.block_size),
            runner.lora.num_slots,
            layout.block_size,
            runner.scratch_block,
            runner.device,
        )
        self.sizes = padded_sizes(max_num_seqs)
        self.pad = graphs if pad is None else pad
        self.gather_keys = runner.backends[1] == "torch"  # the SDPA reference gathers keys
        self.graphs: DecodeGraphs | None = None
        if graphs:
            self.graphs = self._capture()

    eligible = staticmethod(is_pure_decode)

    def run(
        self, scheduled: list[ScheduledSeq], slot_of: dict[str, int]
    ) -> tuple[list[Sequence], torch.Tensor]:
        """One pure-decode step: (sequences in row order, float32 logits [n, vocab])."""
        n = len(scheduled)
        size = self.sizes[bisect.bisect_left(self.sizes, n)] if self.pad else None
        step = self.inputs.fill(scheduled, slot_of, size)
        if self.graphs is not None and self.graphs.captured(step.size):
            logits = self.graphs.replay(step.size)
        else:
            logits = self.forward(step.size, step.max_seq_len, step.lora_rows)
        return step.seqs, logits[:n]

    def forward(self, size: int, max_seq_len: int, lora_rows: int | None) -> torch.Tensor:
        """The decode forward over the buffers' first ``size`` rows -> logits [size, vocab]."""
        ids, positions, attention, lora = self.inputs.step_tensors(
            size, max_seq_len, lora_rows, self.gather_keys
        )
        return self.runner.run_model(ids, positions, attention, lora)

    def _capture(self) -> DecodeGraphs | None:
        """Capture every size (graphs: their bounds fixed, ``max_model_len`` keys and every
        row an upper bound of the adapter rows); on failure, log it and stay eager."""
        context = self.runner.lora.context

        def prepare(size: int) -> None:
            self.inputs.fill_padding(size)
            self.inputs.copy_all()

        def every_layer(on: bool) -> None:
            context.every_layer = on

        try:
            return DecodeGraphs(
                lambda size: self.forward(size, self.max_model_len, None),
                self.sizes,
                prepare,
                every_layer,
            )
        except Exception:  # a model whose forward cannot be captured still serves, eagerly
            log.exception("CUDA graph capture failed; decode steps run eagerly")
            torch.cuda.synchronize()
            return None


def decode_runner_for(
    runner: ModelRunner, max_num_seqs: int, max_model_len: int, enforce_eager: bool
) -> DecodeRunner:
    """The engine's decode path: graphs where :func:`graphs_unavailable` finds no reason."""
    reason = graphs_unavailable(runner.device, runner.backends, enforce_eager)
    if reason is not None and runner.device.type == "cuda":
        log.info("decode steps run eagerly: %s", reason)
    return DecodeRunner(runner, max_num_seqs, max_model_len, graphs=reason is None)
