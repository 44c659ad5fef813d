"""The plain rules of adapters/rules.py: adapter names and the limits' own checks (strict JSON
and the refused file suffixes are exercised through the config and folder tests)."""

from __future__ import annotations

import pytest

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import Limits, validate_name


@pytest.mark.parametrize("name", ["a", "tiny-a", "A.b_c-1", "v2.0", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        *("", ".", "..", ".hidden", "../x", "a/b", "a\\b", "/etc", "x" * 65, "-a", "_a"),
        *("a b", "a\n", "a\0", "é", None, 5),
    ],
)
def test_names_that_could_form_paths_are_refused(name: object) -> None:
    with pytest.raises(AdapterValidationError, match="invalid adapter name"):
        validate_name(name)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_rank"):
        Limits(max_rank=0)
