"""LoRA on MoE experts and routers (lora/moe.py): the experts forward is transformers' own for
rows without an adapter (bit for bit), and in a mixed batch each row gets what PEFT computes
for its adapter alone (expert tensors, router and attention in one adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import save_tiny_model
from transformers import AutoModelForCausalLM

from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import load_adapter
from loraplex.lora.manager import LoRAModelManager
from loraplex.lora.moe import EXPERTS_IMPLEMENTATION, RouterLoRA
from loraplex.lora.ops import build_lora_meta

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards

TOKENS = 12
EXPERTS = ["experts.gate_up_proj", "experts.down_proj", "gate.weight"]


@pytest.fixture(scope="module", params=["qwen3_moe", "mixtral"])
def moe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(model folder, {adapter name: folder}): adapter ``e`` on the experts and router only,
    ``a`` on experts, router and attention with rsLoRA and a per-tensor rank."""
    root = tmp_path_factory.mktemp(request.param)
    model_dir = save_tiny_model(root / "model", request.param)
    lora = {
        "e": {"r": 4, "lora_alpha": 8, "target_modules": [], "target_parameters": EXPERTS},
        "a": {
            "r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "o_proj"],
            "target_parameters": EXPERTS, "rank_pattern": {"down_proj": 4},
        },
    }  # fmt: skip
    for seed, (name, fields) in enumerate(lora.items(), start=5):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        peft = get_peft_model(base, LoraConfig(init_lora_weights=False, **fields))
        with torch.no_grad():
            for pname, param in peft.named_parameters():
                if "lora_" in pname:
                    param.mul_(0.5)
        peft.save_pretrained(root / name)
    return model_dir, {name: root / name for name in lora}


def served(model_dir: Path, adapters: dict[str, Path]) -> tuple[torch.nn.Module, LoRAModelManager]:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    manager = LoRAModelManager(model, num_slots=2, max_rank=8)
    for slot, folder in enumerate(adapters.values()):
        weights = load_adapter(folder.name, folder, manager.module_shapes(), limits=Limits(16))
        manager.load_slot(slot, weights)
    return model, manager


def test_without_adapters_the_experts_are_transformers_own(moe) -> None:
    model_dir, adapters = moe
    ids = torch.randint(2, 90, (2, TOKENS), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model, manager = served(model_dir, adapters)
    assert model.config._experts_implementation == EXPERTS_IMPLEMENTATION
    assert any(isinstance(m, RouterLoRA) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)  # no step metadata
        # Every row on the base model but the LoRA path forced on (as a CUDA graph runs it):
        # the (slot, expert) groups are empty and the output is still bit for bit the same.
        manager.context.every_layer = True
        manager.set_step(build_lora_meta([0] * TOKENS + [-1] * TOKENS, 2), None)
        manager.load_slot(0, None)
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("order", ["e-a-base", "a-base-base"])
def test_mixed_batch_rows_equal_peft_per_adapter(moe, order: str) -> None:
    """Rows of slot 0, slot 1 and the base model in one forward (slot-sorted, base last)."""
    model_dir, adapters = moe
    names = {"e-a-base": ["e", "a", None], "a-base-base": ["a", None, None]}[order]
    ids = torch.randint(2, 90, (3, TOKENS), generator=torch.Generator().manual_seed(1))
    model, manager = served(model_dir, adapters)
    slot = {"e": 0, "a": 1, None: -1}
    manager.set_step(build_lora_meta([slot[n] for n in names for _ in range(TOKENS)], 2), None)
    with torch.no_grad():
        logits = model(ids).logits
    manager.set_step(None, None)
    for row, name in enumerate(names):
        expected = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        if name is not None:
            expected = PeftModel.from_pretrained(expected, adapters[name]).eval()
        with torch.no_grad():
            want = expected(ids[row : row + 1]).logits[0]
        torch.testing.assert_close(logits[row], want, rtol=1e-4, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():  # the adapters change the output (so the comparison means something)
        assert (base(ids).logits[0] - logits[0]).abs().max() > 1e-2
