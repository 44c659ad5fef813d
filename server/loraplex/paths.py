"""Where loraplex keeps what it builds or converts: one cache root, read when asked.

``$LORAPLEX_CACHE`` (or ``~/.cache/loraplex``) holds the converted default model
(``models/``), compiled kernels (``kernels/``) and the default adapter store's downloads.
The environment is read at call time, never at import, so tests can point it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$LORAPLEX_CACHE`` or ``~/.cache/loraplex``."""
    return Path(os.environ.get("LORAPLEX_CACHE", Path.home() / ".cache" / "loraplex"))


def kernel_cache() -> Path:
    """Where compiled kernels live (one library per source, compiler and CPU)."""
    return cache_root() / "kernels"


def models_cache() -> Path:
    """Where converted base models live (one folder per model)."""
    return cache_root() / "models"
