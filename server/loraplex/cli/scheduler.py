"""The ``scheduler`` options of ``loraplex serve``: the flags and the :class:`SchedulerConfig`."""

from __future__ import annotations

import argparse

from loraplex.config import BATCH_DEFAULTS, SchedulerConfig, batch_defaults


def add_options(serve: argparse.ArgumentParser) -> None:
    """The scheduler options."""
    sched = serve.add_argument_group("scheduler")
    (cpu_seqs, cpu_tokens), (gpu_seqs, gpu_tokens) = BATCH_DEFAULTS["cpu"], BATCH_DEFAULTS["cuda"]
    sched.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,  # the device's (config.batch_defaults)
        help=f"most sequences in one step's batch; default: {gpu_seqs} on CUDA, "
        f"{cpu_seqs} elsewhere",
    )
    sched.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="most tokens (decode tokens plus prefill chunks) in one step; default: "
        f"{gpu_tokens} on CUDA, {cpu_tokens} elsewhere",
    )
    sched.add_argument(
        "--max-seqs-per-request",
        type=int,
        default=SchedulerConfig.max_seqs_per_request,
        help="most sequences one request may queue: its prompts times n (a longer list of "
        "prompts or a larger n is a 400)",
    )

    sched.add_argument(
        "--max-queued-requests",
        type=int,
        default=SchedulerConfig.max_queued_requests,
        help="most requests waiting (not yet running) in all; past it a 429 with Retry-After",
    )
    sched.add_argument(
        "--max-queued-requests-per-tenant",
        type=int,
        default=None,
        help="most requests of one tenant waiting; past it that tenant gets 429s while others "
        "are still admitted; default: no per-tenant cap",
    )
    sched.add_argument(
        "--adapter-affinity",
        action=argparse.BooleanOptionalAction,
        default=SchedulerConfig.adapter_affinity,
        help="when more requests wait than a step takes, admit first each tenant's requests "
        "whose adapter is already in the batch, pinned, resident in a device slot, or none "
        "(base model / pre-merged); tenants' round-robin turns are kept. "
        "Off by default: arrival order",
    )
    sched.add_argument(
        "--adapter-affinity-max-skips",
        type=int,
        default=SchedulerConfig.adapter_affinity_max_skips,
        metavar="N",
        help="with --adapter-affinity: a request passed over in N steps (later requests of its "
        "tenant admitted first) goes first in its tenant's order; larger N: fewer adapter "
        "loads, longer worst-case time to first token; 0: arrival order",
    )


def to_config(args: argparse.Namespace) -> SchedulerConfig:
    """The :class:`SchedulerConfig` of parsed ``serve`` arguments (validated there)."""
    max_num_seqs, max_num_batched_tokens = _step_limits(args)
    return SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_seqs_per_request=args.max_seqs_per_request,
        max_queued_requests=args.max_queued_requests,
        max_queued_requests_per_tenant=args.max_queued_requests_per_tenant,
        adapter_affinity=args.adapter_affinity,
        adapter_affinity_max_skips=args.adapter_affinity_max_skips,
    )


def _step_limits(args: argparse.Namespace) -> tuple[int, int]:
    """``--max-num-seqs`` and ``--max-num-batched-tokens``, each the device's default when not
    given (None), so ``--device cuda`` alone gets a GPU's batch sizes."""
    seqs, tokens = batch_defaults(args.device)
    return (
        seqs if args.max_num_seqs is None else args.max_num_seqs,
        tokens if args.max_num_batched_tokens is None else args.max_num_batched_tokens,
    )
