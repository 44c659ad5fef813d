"""Issue 10, item 4: merges are capped by --max-merged-adapters (409 naming it), their memory
is accounted and given back on unmerge, and the merge is computed off the engine thread.

The model here is "medium" (hidden 512, six layers, 75 MB): one merged copy of a rank-1
adapter on all seven projections is ~69 MB, large enough to see in this process's RSS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from adapter_files import assert_error, complete, post, text
from attack_helpers import bystanders, rss_mb
from builders import ALL_SEVEN

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.async_engine import AsyncEngine

ADAPTERS = ("m0", "m1", "m2")


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Config:
    """The tiny model's tokenizer on a 75 MB Llama, and three r=1 all-seven adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("medium")
    model_dir = root / tiny_model_dir.name  # the same name: the adapters' base matches
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(10 + i)
        lora = LoraConfig(r=1, lora_alpha=2, target_modules=ALL_SEVEN, init_lora_weights=False)
        base = LlamaForCausalLM.from_pretrained(model_dir)
        get_peft_model(base, lora).save_pretrained(root / "store" / name)
    return Config(
        model=ModelConfig(model=str(model_dir), served_model_name="medium", max_model_len=128),
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=128),
        lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(root / "store")),
    )


@pytest.fixture(scope="module")
def served(server_factory: Callable[..., str], medium: Config) -> Iterator[tuple[str, AsyncEngine]]:
    engine = AsyncEngine.from_config(medium)
    yield server_factory(medium, engine), engine


def copy_bytes(config: Config) -> int:
    """What one merged copy of an all-seven adapter holds: every projection's weight, fp32."""
    h, i, layers, kv = 512, 1536, 6, 2 * 128
    return 4 * layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def merge(url: str, name: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{url}/v1/adapters/{name}/merge", timeout=timeout)


def unmerge(url: str, name: str) -> httpx.Response:
    return post(url, f"/v1/adapters/{name}/unmerge")


def settled_rss(engine: AsyncEngine) -> float:
    """RSS once the merge worker has freed what was dropped (it frees asynchronously)."""
    engine.engine.tiers.merges.wait_idle()
    return rss_mb()


def test_merges_are_capped_and_memory_returns(
    served: tuple[str, AsyncEngine], medium: Config
) -> None:
    url, engine = served
    copy_mb = copy_bytes(medium) / 2**20
    expected = {m: text(complete(url, m)) for m in ("medium", "m1")}
    assert merge(url, "m0").status_code == 200 and unmerge(url, "m0").status_code == 200
    start = settled_rss(engine)
    with bystanders(url, expected):
        merged = merge(url, "m0")
        assert merged.status_code == 200, merged.text
        location = merged.json()["location"]
        assert location["merged"] is True and location["merged_bytes"] == copy_bytes(medium)
        assert rss_mb() > start + 0.8 * copy_mb
        peak = rss_mb()
        for name in ("m1", "m2"):  # the attack: merge everything
            error = assert_error(merge(url, name), 409, "--max-merged-adapters", "at most 1")
            assert error["code"] == "limit_reached" and error["param"] == "merge"
        assert rss_mb() < peak + 0.2 * copy_mb  # a refusal allocates nothing
        assert unmerge(url, "m0").json()["location"]["merged_bytes"] == 0
        for _ in range(4):  # a merge/unmerge loop holds at most one copy at any time
            assert merge(url, "m1").status_code == 200
            assert unmerge(url, "m1").status_code == 200
    end = settled_rss(engine)
    assert end < start + 0.25 * copy_mb, (start, peak, end)
    gauge = httpx.get(f"{url}/metrics").text
    assert "loraplex_merged_adapter_bytes 0.0" in gauge and "loraplex_merged_adapters 0.0" in gauge


def test_the_merge_is_computed_off_the_engine_thread(served: tuple[str, AsyncEngine]) -> None:
    """A merge that takes as long as the test wants (the real computation, started late) while
    other requests come and go; a client that hangs up meanwhile frees nothing early."""
    url, engine = served
    merges = engine.engine.tiers.merges
    real, gate, entered, threads = merges.manager.merged_weights, threading.Event(), [], []

    def slow_merged_weights(adapter):  # the real computation, once the test lets it run
        threads.append(threading.current_thread().name)
        entered.append(adapter.name)
        gate.wait(60)
        return real(adapter)

    expected = {"medium": text(complete(url, "medium"))}
    dynamic = text(complete(url, "m2"))
    merges.manager.merged_weights = slow_merged_weights
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up; the merge goes on
            merge(url, "m2", timeout=0.5)
        assert entered == ["m2"]
        with bystanders(url, expected, min_runs=3) as watch:
            time.sleep(1.0)  # the merge is "computing" all this time
        assert len(watch.results["medium"]) >= 3
        # Its place under the cap is still taken: nothing was released when the client left.
        assert_error(merge(url, "m0"), 409, "--max-merged-adapters")
        gate.set()
        deadline = time.monotonic() + 30
        while not merges.serves(engine.engine.registry.get("m2").key):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        gate.set()
        merges.manager.merged_weights = real
    assert threads == ["loraplex-merge_0"]
    assert text(complete(url, "m2")) == dynamic  # now served from the merged copy
    assert unmerge(url, "m2").status_code == 200
    assert merge(url, "m0").status_code == 200 and unmerge(url, "m0").status_code == 200
