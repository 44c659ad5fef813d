"""Fixtures the API tests share (the servers themselves are in the top-level conftest)."""

from __future__ import annotations

import pytest

from loraplex.config import Config


@pytest.fixture(scope="module")
def base_name(tiny_config: Config) -> str:
    """The id the tiny model is served under (``model`` of a request without an adapter)."""
    assert tiny_config.model.served_model_name is not None
    return tiny_config.model.served_model_name
