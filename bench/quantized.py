"""The serving benchmark's quantized-base part (issue 20): the NF4 server (``scenarios.NF4``:
the main server's store and options plus ``--quantization bitsandbytes``) against the float
one on the same requests, and every server's memory as its ``/metrics`` reports it.

Two targets:

- weights: the float server's weight bytes over the NF4 server's, at least ``WEIGHT_RATIO``
  (the projections go to 4 bits; embeddings and norms stay float);
- LoRA tax: ``1 - tok/s(u16) / tok/s(base)`` on the NF4 server at most the float server's plus
  ``TAX_MARGIN`` (the update runs in the compute dtype on either base: it should cost the same).
"""

from __future__ import annotations

import math
import re

from common import markdown_table
from scenarios import MAIN, NF4
from stats import RunStats, median_ratio

WEIGHT_RATIO = 2.0
TAX_MARGIN = 0.05
MIB = 2**20


def read_memory(url: str) -> dict:
    """A server's ``/metrics``: weight bytes by format, resident memory, merged copies' bytes."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    weights = {
        fmt: float(value)
        for fmt, value in re.findall(
            r'^loraplex_model_weight_bytes\{format="([^"]+)"\} (\S+)$', text, re.M
        )
    }

    def sample(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found[1]) if found else math.nan

    return {
        "weights": weights,
        "rss": sample("process_resident_memory_bytes"),
        "merged": sample("loraplex_merged_adapter_bytes"),
    }


def memory_table(memory: dict[str, dict]) -> str:
    rows = []
    for server, m in sorted(memory.items()):
        by_format = ", ".join(f"{fmt} {n / MIB:.1f}" for fmt, n in sorted(m["weights"].items()))
        total = sum(m["weights"].values())
        rows.append([
            server, by_format, f"{total / MIB:.1f}", f"{m['rss'] / MIB:.0f}",
            f"{m['merged'] / MIB:.0f}", f"{(m['rss'] - m['merged']) / MIB:.0f}",
        ])  # fmt: skip
    header = ["server", "weights by format (MiB)", "weights MiB", "RSS MiB",
              "merged copies MiB", "RSS less merged MiB"]  # fmt: skip
    return markdown_table(header, rows)


def _tax(results: dict[str, list[RunStats]], adapters: str, base: str) -> float:
    if adapters not in results or base not in results:
        return math.nan
    return 1 - median_ratio(results[adapters], results[base])


def evaluate(results: dict[str, list[RunStats]], memory: dict[str, dict]) -> dict:
    """The two targets: each ``{value, wanted, status}`` (``not run`` without both servers)."""
    float_bytes = sum(memory.get(MAIN, {}).get("weights", {}).values())
    nf4_bytes = sum(memory.get(NF4, {}).get("weights", {}).values())
    ratio = float_bytes / nf4_bytes if float_bytes and nf4_bytes else math.nan
    tax_float, tax_nf4 = _tax(results, "u16", "base"), _tax(results, "nf4-u16", "nf4-base")

    def status(ok: bool, value: float) -> str:
        return "not run" if math.isnan(value) else ("met" if ok else "missed")

    return {
        "8a. weight bytes, float32 / NF4": {
            "value": ratio, "wanted": f">= {WEIGHT_RATIO:g}",
            "status": status(ratio >= WEIGHT_RATIO, ratio),
        },
        "8b. LoRA tax (u16 vs base), NF4 vs float32": {
            "value": tax_nf4, "float32": tax_float,
            "wanted": f"<= float32's + {TAX_MARGIN:g}",
            "status": status(tax_nf4 <= tax_float + TAX_MARGIN, tax_nf4 - tax_float),
        },
    }  # fmt: skip


def report(results: dict[str, list[RunStats]], memory: dict[str, dict]) -> str:
    """The memory table and the quantized targets, as a block after the main report."""
    if not memory:
        return ""
    rows = []
    for label, t in evaluate(results, memory).items():
        value = "-" if math.isnan(t["value"]) else f"{t['value']:.2f}"
        if "float32" in t and not math.isnan(t["float32"]):
            value += f" (float32: {t['float32']:.2f})"
        rows.append([label, t["wanted"], value, t["status"]])
    targets = markdown_table(["target", "wanted", "value", "status"], rows)
    return "\n".join(["", "Memory (each server's /metrics):", "", memory_table(memory), "",
                      "Quantized base (issue 20):", "", targets]) + "\n"  # fmt: skip
