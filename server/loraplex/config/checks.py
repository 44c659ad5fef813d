"""The one check every config section uses."""

from __future__ import annotations


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` (which names the option) unless ``condition``."""
    if not condition:
        raise ValueError(message)
