"""LoRA on a MoE model's fused expert tensors and routers, installed beside the LoRA layers.

transformers stores a MoE layer's experts as 3-D tensors on one module (decorated with
``use_experts_implementation``): ``gate_up_proj`` (or ``up_proj``) [E, 2I, H] and ``down_proj``
[E, H, I] ([E, in, out] when ``is_transposed``), and routes tokens with a router whose ``weight``
[E, H] is applied with ``F.linear``. PEFT adapts them through ``target_parameters``
(``adapters/param_targets.py``): expert e of parameter p gets ``scale · B_e · A_e``, the router
``scale · B · A``, exactly like a projection.

Here every such parameter gets a :class:`ParamLoRA` slot table, and

- the experts run through :func:`lora_experts_forward` (``moe_forward.py``), registered with
  transformers' ``ExpertsInterface`` like the paged attention function: per token t routed to
  expert e, ``h = W_e·x + s·B_{s_t,e}·A_{s_t,e}·x`` for the token's adapter slot ``s_t``;
- a router is wrapped in :class:`RouterLoRA`, which adds ``s·B·A·x`` to the logits its
  ``F.linear`` computes (before top-k), for each token's slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from loraplex.adapters.weights import LoRAWeights
from loraplex.lora.layers import LoRAContext
from loraplex.lora.moe_forward import lora_experts_forward
from loraplex.lora.ops.torch_ops import add_lora
from loraplex.lora.slot_copier import SlotCopier

EXPERTS_IMPLEMENTATION = "loraplex_experts"
EXPERT_TENSORS = ("gate_up_proj", "up_proj", "down_proj")

__all__ = ["EXPERTS_IMPLEMENTATION", "ParamLoRA", "RouterLoRA", "install_moe_lora"]


class ParamLoRA(nn.Module):
    """Slot tables of one adapted parameter of E experts (a router: E = 1).

    lora_a: [S, E, R, in] holds each slot's per-expert A; lora_b: [S, E, R, out] its
    ``(scale·B_e)ᵀ``, zero-padded from the adapter's rank up to R (an empty slot is a no-op).
    """

    def __init__(
        self,
        experts: int,
        in_features: int,
        out_features: int,
        num_slots: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.experts, self.in_features, self.out_features = experts, in_features, out_features
        shape = (num_slots, experts, max_rank)
        self.register_buffer(
            "lora_a", torch.zeros(*shape, in_features, dtype=dtype, device=device), False
        )
        self.register_buffer(
            "lora_b", torch.zeros(*shape, out_features, dtype=dtype, device=device), False
        )
        self.occupied: set[int] = set()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(E, in, out): what an adapter's weights are checked against."""
        return self.experts, self.in_features, self.out_features

    def set_slot(
        self, slot: int, weights: LoRAWeights | None, copier: SlotCopier | None = None
    ) -> None:
        """Write a's [E, r, in] and (scale·b)ᵀ [E, r, out] into ``slot``, or clear it."""
        if weights is None:
            if slot in self.occupied:
                self.lora_a[slot].zero_()
                self.lora_b[slot].zero_()
                self.occupied.discard(slot)
            return
        copier = copier or SlotCopier(self.lora_a.device)
        r = weights.rank
        copier.copy(self.lora_a[slot, :, :r], weights.a)
        self.lora_a[slot, :, r:].zero_()
        copier.copy(self.lora_b[slot, :, :r], weights.b.mT, weights.scale)
        self.lora_b[slot, :, r:].zero_()
        self.occupied.add(slot)


class _RouterLogits(TorchFunctionMode):
    """Inside a router's forward: the first ``F.linear`` with the router weight's shape gets
    the LoRA update added to its output (routers may cast the weight, e.g. ``.float()``)."""

    def __init__(self, router: RouterLoRA) -> None:
        super().__init__()
        self.router = router
        self.pending = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.pending and func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            if weight.shape == self.router.weight_shape:
                self.pending = False
                self.router.add_update(out, x)
        return out


class RouterLoRA(nn.Module):
    """A MoE router with LoRA on its weight: logits ``W·x + s·B_{s_t}·A_{s_t}·x`` per token.

    Attributes the MoE block reads from its router (``top_k``, ``weight`` ...) pass through.
    """

    def __init__(self, base: nn.Module, table: ParamLoRA, context: LoRAContext) -> None:
        super().__init__()
        self.base = base
        self.table = table
        self.context = context
        self.weight_shape = base.weight.shape

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base, name)

    def forward(self, *args: object, **kwargs: object) -> object:
        meta = self.context.meta
        if meta is None or not (self.table.occupied or self.context.every_layer):
            return self.base(*args, **kwargs)
        with _RouterLogits(self):
            return self.base(*args, **kwargs)

    def add_update(self, logits: torch.Tensor, x: torch.Tensor) -> None:
        """In place on ``logits`` [T, E] (x [T, H]): the torch reference op (E is small)."""
        table = self.table
        a, b = table.lora_a[:, 0], table.lora_b[:, 0]  # [S, R, H], [S, R, E]
        add_lora(logits.view(-1, table.out_features), x.reshape(-1, table.in_features), a, b,
                 self.context.meta)  # fmt: skip


def _is_fused_experts(module: nn.Module) -> bool:
    """transformers' decorated experts module (``use_experts_implementation``)."""
    down = getattr(module, "down_proj", None)
    return (
        hasattr(module, "is_transposed")
        and hasattr(module, "has_gate")
        and isinstance(down, nn.Parameter)
        and down.dim() == 3
    )


def _router_of(parent: nn.Module, experts: int) -> tuple[str, nn.Module] | None:
    """The experts' sibling that routes, with a 2-D ``weight`` [E, H] of its own and not a
    plain ``nn.Linear`` (that one is a projection: a LoRA layer wraps it)."""
    for name, child in parent.named_children():
        weight = child._parameters.get("weight")
        if type(child) is nn.Linear or weight is None or weight.dim() != 2:
            continue
        if weight.shape[0] == experts:
            return name, child
    return None


def routers(model: nn.Module) -> set[int]:
    """``id`` of every router :func:`install_moe_lora` wraps: the LoRA layers leave them alone
    (a router subclassing ``nn.Linear`` may return a tuple, as Phi-MoE's does)."""
    found = set()
    for name, module in model.named_modules():
        if _is_fused_experts(module):
            router = _router_of(model.get_submodule(name.rpartition(".")[0]), module.num_experts)
            if router is not None:
                found.add(id(router[1]))
    return found


def install_moe_lora(
    model: nn.Module,
    num_slots: int,
    max_rank: int,
    context: LoRAContext,
    table_dtype: torch.dtype | None,
) -> dict[str, ParamLoRA]:
    """Give every fused experts module and its router slot tables; returns them by parameter
    path, each module's in registration order (the order PEFT nests its wrappers in)."""
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, lora_experts_forward)
    tables: dict[str, ParamLoRA] = {}
    found = [(n, m) for n, m in model.named_modules() if _is_fused_experts(m)]
    for name, experts in found:
        held = nn.ModuleDict()
        for pname, param in experts.named_parameters(recurse=False):
            if pname not in EXPERT_TENSORS or param.dim() != 3:
                continue
            count, d1, d2 = param.shape
            fan_in, fan_out = (d1, d2) if experts.is_transposed else (d2, d1)
            dtype = table_dtype or param.dtype
            held[pname] = ParamLoRA(
                count, fan_in, fan_out, num_slots, max_rank, dtype, param.device
            )
            tables[f"{name}.{pname}"] = held[pname]
        experts.loraplex = held  # read by lora_experts_forward, with the shared context
        experts.loraplex_context = context
        experts.config._experts_implementation = EXPERTS_IMPLEMENTATION
        parent_name = name.rpartition(".")[0]
        router = _router_of(model.get_submodule(parent_name), experts.num_experts)
        if router is not None:
            child, module = router
            weight = module.weight
            table = ParamLoRA(1, weight.shape[1], weight.shape[0], num_slots, max_rank,
                              table_dtype or weight.dtype, weight.device)  # fmt: skip
            setattr(model.get_submodule(parent_name), child, RouterLoRA(module, table, context))
            tables[f"{parent_name}.{child}.weight"] = table
    return tables
