"""What one step may hold and how requests queue (``--max-num-seqs``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.config.checks import require

# Per-step batch limits (max_num_seqs, max_num_batched_tokens) when --max-num-seqs and
# --max-num-batched-tokens are not given: a laptop CPU's, and a GPU's. The GPU's are vLLM's for
# its API server (EngineArgs.get_batch_defaults): 256 sequences, and 8192 tokens, its budget
# on GPUs of 70 GiB or more (2048 on smaller ones).
BATCH_DEFAULTS = {"cpu": (64, 512), "cuda": (256, 8192)}


def batch_defaults(device: str) -> tuple[int, int]:
    """``(max_num_seqs, max_num_batched_tokens)`` by default on ``device`` (a torch device
    string: ``cuda:1`` is a CUDA device; anything but CUDA gets the CPU's)."""
    kind = "cuda" if device.partition(":")[0] == "cuda" else "cpu"
    return BATCH_DEFAULTS[kind]


@dataclass(frozen=True)
class SchedulerConfig:
    """Per-step budgets: at most ``max_num_seqs`` sequences and ``max_num_batched_tokens``
    tokens (decode tokens plus prefill chunks) in one forward. ``max_seqs_per_request``: the
    most sequences (prompts x ``n``) one request may queue, so a small body cannot queue
    tens of thousands. ``max_queued_requests`` (in all) and ``max_queued_requests_per_tenant``
    cap the requests waiting, not yet running; past either a 429 (None: no per-tenant cap).
    The two step budgets default to the CPU's; the command line takes the device's
    (``batch_defaults``).
    ``adapter_affinity``: when more requests wait than a step takes, admit first each tenant's
    requests whose adapter costs no new slot or is already resident, within the starvation
    bound and without reordering tenants (``engine/sched/affinity.py``); False: the fair order.
    ``adapter_affinity_max_skips``: that bound, the steps in which affinity may pass a request
    over before it goes first in its tenant's order (0: the fair order)."""

    max_num_seqs: int = BATCH_DEFAULTS["cpu"][0]
    max_num_batched_tokens: int = BATCH_DEFAULTS["cpu"][1]
    max_seqs_per_request: int = 256
    max_queued_requests: int = 1024
    max_queued_requests_per_tenant: int | None = None
    adapter_affinity: bool = False
    adapter_affinity_max_skips: int = 8

    def __post_init__(self) -> None:
        require(self.max_queued_requests > 0, "--max-queued-requests must be positive")
        require(
            self.max_queued_requests_per_tenant is None or self.max_queued_requests_per_tenant > 0,
            "--max-queued-requests-per-tenant must be positive",
        )
        require(self.max_num_seqs > 0, "--max-num-seqs must be positive")
        require(self.max_seqs_per_request > 0, "--max-seqs-per-request must be positive")
        require(self.max_num_batched_tokens > 0, "--max-num-batched-tokens must be positive")
        require(
            isinstance(self.adapter_affinity, bool),
            f"--adapter-affinity must be a bool, got {self.adapter_affinity!r}",
        )
        require(self.adapter_affinity_max_skips >= 0, "--adapter-affinity-max-skips must be >= 0")
