"""The experts forward with per-token LoRA: the torch reference (grouped matmuls, graph-safe).

It is transformers' ``grouped_mm`` experts forward (``integrations/moe.py``), op for op, so a
row without an adapter gets exactly the base model's numbers, plus, for the (token, expert)
pairs whose token has an adapter slot s, the update of each adapted tensor p:

    up_p   += s·B^{gate_up}_{s,e} · (A^{gate_up}_{s,e} · x_t)       (before the activation)
    down_p += s·B^{down}_{s,e} · (A^{down}_{s,e} · h_p)

Pairs are grouped by (slot, expert) (``group = slot·E + e``; base pairs sort last, past every
group) and each factor is one grouped matmul over all S·E groups, from fixed-size tables: no
host sync, no branch on data, so a decode step with MoE layers can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.integrations.moe import _grouped_linear, _grouped_mm

from loraplex.lora.ops.meta import LoRAMeta

__all__ = ["lora_experts_forward"]


def _histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of ``values`` in ``0..bins-1`` (others ignored), as transformers counts experts:
    ``histc`` keeps CUDA graphs capturable (``bincount`` syncs)."""
    hist_input = values.float() if values.device.type in ("cpu", "mps") else values.int()
    return torch.histc(hist_input, bins=bins, min=0, max=bins - 1)


class _PairGroups:
    """The step's (token, expert) pairs, in expert order, grouped by (slot, expert)."""

    def __init__(
        self, meta: LoRAMeta, tokens: torch.Tensor, experts: torch.Tensor, num_experts: int,
        num_slots: int, num_tokens: int,
    ) -> None:  # fmt: skip
        rows = torch.arange(num_tokens, device=tokens.device, dtype=meta.group_ends.dtype)
        # Rows [0, n) use slots (sorted, group_ends cumulative); the rest get slot S (base).
        row_slot = torch.searchsorted(meta.group_ends, rows, right=True)
        group = row_slot[tokens] * num_experts + experts  # [P]; base pairs: >= S·E
        self.groups = num_slots * num_experts
        _, self.order = torch.sort(group, stable=True)
        self.offsets = torch.cumsum(_histogram(group, self.groups), 0, dtype=torch.int32)
        pairs = torch.arange(group.shape[0], device=group.device)
        self.valid = (pairs < self.offsets[-1])[:, None]  # rows past the groups: base pairs

    def add(self, y: torch.Tensor, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor):
        """``y + Δ`` for pair rows y [P, out], inputs x [P, in]; tables [S, E, R, in|out]."""
        dtype = torch.promote_types(x.dtype, lora_a.dtype)
        a = lora_a.to(dtype).flatten(0, 1).transpose(1, 2)  # [S·E, in, R]
        b = lora_b.to(dtype).flatten(0, 1)  # [S·E, R, out]
        xs = x.to(dtype).index_select(0, self.order)
        delta = _grouped_mm(_grouped_mm(xs, a, self.offsets), b, self.offsets)
        # Select, never multiply: rows past the last group may hold anything (even NaN).
        delta = torch.where(self.valid, delta, 0.0)
        return y + torch.empty_like(delta).index_copy_(0, self.order, delta).to(y.dtype)


def _lora_groups(
    module: nn.Module, tokens: torch.Tensor, experts: torch.Tensor, num_tokens: int
) -> _PairGroups | None:
    tables = getattr(module, "loraplex", None)
    context = getattr(module, "loraplex_context", None)
    if tables is None or context is None or context.meta is None or not len(tables):
        return None
    if not (context.every_layer or any(t.occupied for t in tables.values())):
        return None
    first = next(iter(tables.values()))
    return _PairGroups(
        context.meta, tokens, experts, module.num_experts, first.lora_a.shape[0], num_tokens
    )


def lora_experts_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """hidden_states [T, H] (the packed rows), top_k_index/weights [T, K] -> [T, H]:
    ``Σ_k w_tk · down_e(act(up_e(x_t)))`` with e = top_k_index[t, k], each tensor's LoRA added."""
    device = hidden_states.device
    num_top_k = top_k_index.size(-1)
    num_tokens, hidden_dim = hidden_states.shape
    sample_weights = top_k_weights.reshape(-1)
    expert_ids_g, perm = torch.sort(top_k_index.reshape(-1))
    tokens_g = perm // num_top_k
    selected = hidden_states[tokens_g]
    sample_weights_g = sample_weights[perm]
    offsets = torch.cumsum(_histogram(expert_ids_g, self.num_experts), 0, dtype=torch.int32)
    lora = _lora_groups(self, tokens_g, expert_ids_g, num_tokens)
    tables = getattr(self, "loraplex", {})

    up = "gate_up_proj" if self.has_gate else "up_proj"
    bias = getattr(self, f"{up}_bias")[expert_ids_g] if self.has_bias else None
    proj = _grouped_linear(
        selected, getattr(self, up), offsets, bias=bias, is_transposed=self.is_transposed
    )
    if lora is not None and up in tables:
        proj = lora.add(proj, selected, tables[up].lora_a, tables[up].lora_b)
    proj = self._apply_gate(proj) if self.has_gate else self.act_fn(proj)
    bias = self.down_proj_bias[expert_ids_g] if self.has_bias else None
    out = _grouped_linear(
        proj, self.down_proj, offsets, bias=bias, is_transposed=self.is_transposed
    )
    if lora is not None and "down_proj" in tables:
        out = lora.add(out, proj, tables["down_proj"].lora_a, tables["down_proj"].lora_b)
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)
    weighted = out * sample_weights_g.unsqueeze(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.size(0), device=device)
    weighted = weighted[inverse]
    return weighted.view(num_tokens, num_top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)
