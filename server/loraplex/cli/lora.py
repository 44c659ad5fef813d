"""The ``LoRA adapters`` options of ``loraplex serve`` (the largest help group): the flags and
the :class:`LoRAConfig` they make."""

from __future__ import annotations

import argparse

from loraplex.config import LORA_DTYPES, LORA_KERNELS, LoRAConfig


def _lora_module(spec: str) -> tuple[str, str]:
    """``name=path`` -> (name, path); argparse turns the ValueError into a usage error."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected name=path, got {spec!r}")
    return name.strip(), path.strip()


def add_options(serve: argparse.ArgumentParser) -> None:
    """Slots, ranks, kernels, the store and the adapters present at start."""
    lora = serve.add_argument_group("LoRA adapters")
    lora.add_argument(
        "--max-loras",
        type=int,
        default=LoRAConfig.max_loras,
        help="adapter slots: most adapters resident (and in one batch) at once",
    )
    lora.add_argument(
        "--max-lora-rank",
        type=int,
        default=LoRAConfig.max_lora_rank,
        help="largest adapter rank a slot holds",
    )
    lora.add_argument(
        "--lora-kernel",
        choices=LORA_KERNELS,
        default=LoRAConfig.kernel,
        help="add_lora backend: torch (the reference), cpu (a C kernel built on first use with "
        "the system compiler; float32 on the CPU), triton (Triton kernels on CUDA; needs the "
        "triton package) or auto (triton on CUDA, cpu where it applies, else torch)",
    )
    lora.add_argument(
        "--lora-dtype",
        choices=LORA_DTYPES,
        default=LoRAConfig.lora_dtype,
        help="dtype of the adapter slot tables: auto (the model's) or float32, bfloat16, "
        "float16. Under a float32 model on the CPU, 16-bit tables halve the bytes a decode "
        "step streams per adapter (sums stay float32); adapters are rounded to 16 bits once "
        "(bench/NOTES.md: measured effect on outputs)",
    )
    lora.add_argument(
        "--max-pinned-loras",
        type=int,
        default=None,
        help="most adapters pinned to a device slot (upload with pinned=true); past it a pin is "
        "refused with a 409; default: --max-loras // 2",
    )
    lora.add_argument(
        "--max-cpu-loras",
        type=int,
        default=LoRAConfig.max_cpu_loras,
        help="adapters kept loaded in host memory (LRU) behind the device slots",
    )
    lora.add_argument(
        "--adapters-dir",
        default=LoRAConfig.adapters_dir,
        help="adapter store: one PEFT adapter folder per adapter name; '' disables it",
    )
    lora.add_argument(
        "--adapter-store",
        metavar="DIR_OR_URL",
        default=None,
        help="adapter store as a folder or s3://bucket/prefix; overrides --adapters-dir",
    )
    lora.add_argument(
        "--store-poll-s",
        type=float,
        metavar="SECONDS",
        default=LoRAConfig.store_poll_s,
        help="re-read the adapter store's listing this often, so adapters that other replicas "
        "sharing the store upload, replace or delete are served here too; 0: only at start",
    )
    lora.add_argument(
        "--adapter-roots",
        nargs="+",
        default=[],
        metavar="DIR",
        help="the only server-side folders POST /v1/adapters/load may read adapters from",
    )
    lora.add_argument(
        "--merged-adapters",
        nargs="+",
        default=[],
        metavar="NAME",
        help="adapters merged into the base weights at start (dedicated tenants)",
    )
    lora.add_argument(
        "--max-merged-adapters",
        type=int,
        default=LoRAConfig.max_merged_adapters,
        help="most adapters merged into copies of the base weights at once (POST "
        "/v1/adapters/NAME/merge, --merged-adapters); each copy costs every base weight its "
        "adapter targets (up to the model's size); past it a merge is refused with a 409; "
        "0 turns merging off",
    )
    lora.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="accept adapters whose base_model_name_or_path names another model (logged)",
    )
    lora.add_argument(
        "--max-upload-mb",
        type=int,
        default=LoRAConfig.max_upload_mb,
        help="largest adapter upload (request body and each file), in MiB",
    )
    lora.add_argument(
        "--max-adapters-per-tenant",
        type=int,
        default=LoRAConfig.max_adapters_per_tenant,
        metavar="N",
        help="most adapters one tenant keeps in the store; past it an upload is a 409 "
        "(quota_exceeded), a replace is not; public adapters do not count; 0: no limit",
    )
    lora.add_argument(
        "--max-adapter-mb-per-tenant",
        type=int,
        default=LoRAConfig.max_adapter_bytes_per_tenant >> 20,
        metavar="MIB",
        help="most MiB of adapter files (config and weights) one tenant keeps in the store; "
        "past it an upload is a 409 (quota_exceeded); 0: no limit",
    )
    lora.add_argument(
        "--lora-modules",
        nargs="+",
        type=_lora_module,
        default=[],
        metavar="NAME=PATH",
        help="extra adapters to register at start, as name=path pairs (vLLM style)",
    )


def to_config(args: argparse.Namespace) -> LoRAConfig:
    """The :class:`LoRAConfig` of parsed ``serve`` arguments (validated there)."""
    return LoRAConfig(
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        max_pinned_loras=args.max_pinned_loras,
        adapters_dir=args.adapters_dir or None,
        adapter_store=args.adapter_store or None,
        lora_modules=tuple(args.lora_modules),
        adapter_roots=tuple(args.adapter_roots),
        merged_adapters=tuple(args.merged_adapters),
        max_merged_adapters=args.max_merged_adapters,
        allow_base_mismatch=args.allow_base_mismatch,
        max_upload_mb=args.max_upload_mb,
        kernel=args.lora_kernel,
        lora_dtype=args.lora_dtype,
        store_poll_s=args.store_poll_s,
        max_adapters_per_tenant=args.max_adapters_per_tenant,
        max_adapter_bytes_per_tenant=args.max_adapter_mb_per_tenant << 20,
    )
