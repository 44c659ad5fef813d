"""Compile every Triton kernel, at the configurations the backends choose for the benchmark's
shapes, for an H100/H200 (sm_90) down to its cubin: no GPU needed (triton ships ptxas).

Run as a script, without TRITON_INTERPRET (``test_triton_compile.py`` does): the interpreter
checks the kernels' arithmetic, this checks that the real compiler accepts them (tile shapes,
types, control flow) before a GPU ever runs them.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from loraplex.engine.attention.block_tables import SequenceTables
from loraplex.engine.attention.metadata import PLAIN, Variant
from loraplex.engine.attention.triton import kernel_constants as attention_constants
from loraplex.engine.attention.triton_kernels import combine_splits_kernel, paged_attention_kernel
from loraplex.lora.ops.triton_kernels import expand_kernel, shrink_kernel
from loraplex.lora.ops.triton_ops import choose_tiles
from loraplex.lora.ops.triton_ops import kernel_constants as lora_constants

TARGET = GPUTarget("cuda", 90, 32)
POINTER = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
FLOAT_POINTERS = ("buf_ptr", "part_ptr", "stats_ptr")
INT_POINTERS = ("ends_ptr", "ranks_ptr", "query_starts_ptr", "seq_lens_ptr", "block_tables_ptr")
# (in features, rows): Llama-3-8B's q/k/v/o/gate/up input decoding and prefilling, and
# down_proj's input decoding, over 16 slots of rank 16.
LORA_SHAPES = ((4096, 64), (4096, 4096), (14336, 16))
# (cached, new) tokens per sequence: 64 x 2k decode; 8 x 2k decode (split keys); a 4k prefill;
# a chunk beside a decode. With (heads, KV heads) each: GQA 4 (Llama-3-8B), 4, 1 and 3.
STEPS = ([(2047, 1)] * 64, [(2047, 1)] * 8, [(0, 4096)], [(100, 28), (7, 1)])
HEADS = ((32, 8), (32, 8), (16, 16), (12, 4))


def signature(kernel, dtype: torch.dtype, constants: dict) -> dict[str, str]:
    types = {}
    for name in kernel.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name in FLOAT_POINTERS:
            types[name] = "*fp32"
        elif name in INT_POINTERS:
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = POINTER[dtype]
        else:
            types[name] = "fp32" if name in ("scale", "softcap") else "i32"
    return types


def configurations(dtypes: tuple[torch.dtype, ...]):
    """(kernel, dtype, compile-time constants), as the backends choose them."""
    for dtype in dtypes:
        for fan_in, rows in LORA_SHAPES:
            tiles = choose_tiles(rows, 16, fan_in, 16, None)
            shrink, expand = lora_constants(tiles, 16, fan_in, True, dtype)
            yield from ((shrink_kernel, dtype, shrink), (expand_kernel, dtype, expand))
        for shapes, (heads, kv_heads) in zip(STEPS, HEADS, strict=True):
            lens = torch.tensor([cached + new for cached, new in shapes])
            longest = max(new for _, new in shapes)
            dummy = torch.zeros(len(shapes) + 1)
            tables = SequenceTables(dummy, lens, dummy, 16, longest, int(lens.max()))
            rows = sum(new for _, new in shapes)
            # Plain attention, and every variant at once (window, softcap, sinks).
            every = Variant(window=512, softcap=50.0, sinks=torch.zeros(heads))
            for variant in (PLAIN, every):
                consts = attention_constants(
                    heads, kv_heads, 128, dtype, tables, rows, None, 64, variant
                )
                yield paged_attention_kernel, dtype, consts
                if consts["NUM_SPLITS"] > 1:
                    combine = {"HEAD_DIM": 128, "BLOCK_D": 128, "NUM_SPLITS": consts["NUM_SPLITS"],
                               "HAS_SINKS": consts["HAS_SINKS"]}  # fmt: skip
                    yield combine_splits_kernel, dtype, combine


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET: this compiles for the GPU")
        return 2
    # bf16 is what a GPU serves; --all adds fp16 and fp32 (fp32 attention compiles slowly).
    dtypes = (
        (torch.bfloat16, torch.float16, torch.float32) if "--all" in sys.argv else (torch.bfloat16,)
    )
    done = set()
    for kernel, dtype, consts in configurations(dtypes):
        key = (kernel.__name__, dtype, tuple(sorted(consts.items())))
        if key in done:
            continue
        done.add(key)
        begin = time.perf_counter()
        source = ASTSource(kernel, signature(kernel, dtype, consts), consts)
        compiled = triton.compile(source, target=TARGET)
        if not compiled.asm.get("cubin"):
            print(f"{kernel.__name__} {dtype} {consts}: no cubin")
            return 1
        print(f"{kernel.__name__} {dtype} {consts}: {time.perf_counter() - begin:.1f} s")
    print(f"{len(done)} kernels compiled for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
