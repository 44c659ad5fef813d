"""Fixtures the API tests share (the servers themselves are in the top-level conftest)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from loraplex.config import Config

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def base_name(tiny_config: Config) -> str:
    """The id the tiny model is served under (``model`` of a request without an adapter)."""
    assert tiny_config.model.served_model_name is not None
    return tiny_config.model.served_model_name


@pytest.fixture(scope="module")
def client(live_server: str) -> openai.OpenAI:
    """The ``openai`` client on :func:`live_server` (modules on another server override it)."""
    # max_retries=0: a failure must surface at once, not after the SDK's back-off.
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_client(chat_url: str) -> openai.OpenAI:
    """The ``openai`` client on :func:`chat_url` (the tiny model with a chat template)."""
    return openai.OpenAI(base_url=f"{chat_url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template (same folder name, so the adapter's base matches)."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_url(server_factory: Callable[..., str], tiny_config: Config, chat_model_dir: Path) -> str:
    """A live server on :func:`chat_model_dir`."""
    model = dataclasses.replace(tiny_config.model, model=str(chat_model_dir))
    return server_factory(dataclasses.replace(tiny_config, model=model))
