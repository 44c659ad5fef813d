"""Constrained decoding: specs (plain data), the compile service (a worker pool and a cache),
compiled grammars and their per-sequence matchers, and the per-step mask."""

from loraplex.engine.constraints.grammar import Grammar
from loraplex.engine.constraints.masks import ConstraintMasks, accept
from loraplex.engine.constraints.service import GrammarService
from loraplex.engine.constraints.spec import ConstraintError, ConstraintSpec

__all__ = [
    "ConstraintError",
    "ConstraintMasks",
    "ConstraintSpec",
    "Grammar",
    "GrammarService",
    "accept",
]
