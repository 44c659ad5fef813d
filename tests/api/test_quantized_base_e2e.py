"""A server over an NF4 base (--quantization bitsandbytes) on loopback: adapters serve and
merge as on a float base, cards name the base format they were checked against, and /metrics
shows the weight bytes by format."""

from __future__ import annotations

import dataclasses
import re

import pytest
from adapter_files import complete, get, post, text

from loraplex.config import Config

pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def url(server_factory, tiny_config: Config) -> str:
    model = dataclasses.replace(tiny_config.model, quantization="bitsandbytes")
    return server_factory(dataclasses.replace(tiny_config, model=model))


def test_adapters_serve_and_merge_on_an_nf4_base(url: str, tiny_adapter_name: str) -> None:
    base, dynamic = text(complete(url, "tiny-llama")), text(complete(url, tiny_adapter_name))
    assert base != dynamic
    card = get(url, f"/v1/adapters/{tiny_adapter_name}").json()
    assert card["base_format"] == "bitsandbytes-nf4"
    merged = post(url, f"/v1/adapters/{tiny_adapter_name}/merge")
    assert merged.status_code == 200, merged.text
    assert merged.json()["location"]["merged_bytes"] > 0  # a float32 copy of what it targets
    assert text(complete(url, tiny_adapter_name)) == dynamic
    assert post(url, f"/v1/adapters/{tiny_adapter_name}/unmerge").status_code == 200
    assert text(complete(url, tiny_adapter_name)) == dynamic
    assert text(complete(url, "tiny-llama")) == base


def test_metrics_show_the_weight_bytes_by_format(url: str) -> None:
    body = get(url, "/metrics").text
    found = dict(re.findall(r'^loraplex_model_weight_bytes\{format="(\w+)"\} (\S+)$', body, re.M))
    assert set(found) == {"nf4", "float32"}
    assert float(found["nf4"]) > 0
