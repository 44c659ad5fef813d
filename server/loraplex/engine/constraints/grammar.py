"""A compiled grammar, shared read-only by every request that asked for the same text, and
the per-sequence matcher it makes: the grammar's state after the tokens accepted so far."""

from __future__ import annotations

from typing import Any


class Grammar:
    """xgrammar's ``CompiledGrammar`` (``kind``: the spec's kind); thread-safe to share."""

    def __init__(self, compiled: Any, kind: str) -> None:
        self.compiled = compiled
        self.kind = kind

    def matcher(self) -> Any:
        """A fresh ``GrammarMatcher`` at the grammar's start: one per sequence, because it
        holds that sequence's state. EOS is accepted only where the grammar is complete, and
        accepting it terminates the matcher."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled)

    @property
    def memory_bytes(self) -> int:
        return int(self.compiled.memory_size_bytes)
