"""Compiling constraints into grammars, off the engine thread, once per distinct text.

xgrammar turns a :class:`ConstraintSpec` into a compiled grammar: the grammar plus, for each
of its states, which vocabulary tokens may come next (the token-mask cache that makes a
per-step mask cheap). Compiling can take from a millisecond to seconds, so it runs in a small
worker pool (xgrammar releases the GIL while it compiles: the engine thread and the event loop
go on), and each result is kept in an LRU cache keyed by ``(kind, text)``: concurrent requests
for one schema share one compile.

Caps (``StructuredConfig``): text over ``max_grammar_bytes`` or a schema nested deeper than
``max_schema_depth`` is refused before any work; a compile not done ``compile_timeout_s``
after it was submitted is refused, and its key stays refused (a worker cannot be interrupted,
so a pathological grammar must not be submitted twice). Every refusal is a
:class:`ConstraintError` (a 400 naming the field). The library is imported, and the
tokenizer's vocabulary read, on the first constrained request, not at start.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from loraplex import metrics
from loraplex.config import StructuredConfig
from loraplex.engine.constraints.grammar import Grammar
from loraplex.engine.constraints.spec import ConstraintError, ConstraintSpec, schema_depth

# xgrammar's errors start with "[time] /path/file.cc:line: " (and sometimes a failed check).
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _LOCATION.sub("", first)[:500]


class GrammarService:
    """Compiles constraints for one tokenizer (``vocab_size``: the model's logits width,
    ``eos_token_ids``: what ends a grammar that is complete)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_token_ids: frozenset[int],
        config: StructuredConfig,
    ) -> None:
        self.config = config
        self._tokenizer, self._vocab_size, self._eos = tokenizer, vocab_size, sorted(eos_token_ids)
        self._pool = ThreadPoolExecutor(config.compile_threads, "loraplex-grammar")
        self._lock = threading.Lock()
        self._compiler: Future | None = None  # xgrammar's GrammarCompiler, built once
        self._cache: OrderedDict[tuple[str, str], Future] = OrderedDict()
        self._refused: OrderedDict[tuple[str, str], str] = OrderedDict()  # timed out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the API's side (event loop) --------------------------------------------------

    async def compile(self, spec: ConstraintSpec) -> Grammar:
        """The compiled grammar of ``spec``; ConstraintError if it is refused or fails."""
        self._check_caps(spec)
        await asyncio.wrap_future(self._setup())  # once; not part of any grammar's time
        future = self.submit(spec)
        try:  # shielded: a caller that gives up must not cancel a compile others share
            await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self.config.compile_timeout_s
            )
        except TimeoutError:
            raise self._timed_out(spec) from None
        except Exception:
            pass  # _result raises it as a ConstraintError
        return self._result(spec, future)

    def compile_now(self, spec: ConstraintSpec) -> Grammar:
        """Blocking :meth:`compile` (tests, benchmarks; never on the engine thread)."""
        self._check_caps(spec)
        self._setup().result()
        future = self.submit(spec)
        try:
            future.result(self.config.compile_timeout_s)
        except TimeoutError:
            raise self._timed_out(spec) from None
        except Exception:
            pass  # _result raises it as a ConstraintError
        return self._result(spec, future)

    # ---- cache and pool ---------------------------------------------------------------

    def submit(self, spec: ConstraintSpec) -> Future:
        """The (maybe shared, maybe finished) compile of ``spec``."""
        key = spec.key
        with self._lock:
            if key in self._refused:
                raise ConstraintError(spec.param, self._refused[key])
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                metrics.record_grammar_cache(hit=True)
                return future
            metrics.record_grammar_cache(hit=False)
            future = self._pool.submit(self._compile, spec)
            self._cache[key] = future
            while len(self._cache) > max(self.config.cache_size, 1):
                self._cache.popitem(last=False)
            return future

    def _timed_out(self, spec: ConstraintSpec) -> ConstraintError:
        message = (
            f"{spec.param}: the {spec.kind.replace('_', ' ')} did not compile within "
            f"{self.config.compile_timeout_s:g} s (--structured-outputs-timeout); simplify it"
        )
        with self._lock:
            self._cache.pop(spec.key, None)
            self._refused[spec.key] = message
            while len(self._refused) > 1024:
                self._refused.popitem(last=False)
        return ConstraintError(spec.param, message)

    def _result(self, spec: ConstraintSpec, future: Future) -> Grammar:
        try:
            return future.result()
        except ConstraintError:
            raise
        except Exception as exc:
            with self._lock:  # a failed compile is not cached: the key may be fixed text
                if self._cache.get(spec.key) is future:
                    del self._cache[spec.key]
            kind = spec.kind.replace("_", " ")
            message = f"{spec.param}: invalid {kind}: {_reason(exc)}"
            raise ConstraintError(spec.param, message) from None

    def _check_caps(self, spec: ConstraintSpec) -> None:
        cap = self.config.max_grammar_bytes
        if len(spec.text.encode()) > cap:
            raise ConstraintError(
                spec.param,
                f"{spec.param} is over {cap} bytes (--structured-outputs-max-bytes)",
            )
        if spec.kind == "json_schema":
            depth, cap = schema_depth(json.loads(spec.text)), self.config.max_schema_depth
            if depth > cap:
                raise ConstraintError(
                    spec.param,
                    f"{spec.param} nests {depth} levels deep, over {cap} "
                    "(--structured-outputs-max-depth)",
                )

    # ---- the workers ------------------------------------------------------------------

    def _setup(self) -> Future:
        """xgrammar imported and the vocabulary read, once, in the pool (seconds for a large
        vocabulary): the future of xgrammar's ``GrammarCompiler``."""
        with self._lock:
            if self._compiler is None:
                self._compiler = self._pool.submit(self._new_compiler)
            return self._compiler

    def _new_compiler(self) -> Any:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(
            self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos
        )
        # Our cache is the one cache (keyed by text); xgrammar's would keep a second copy.
        return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def _compile(self, spec: ConstraintSpec) -> Grammar:
        compiler = self._setup().result()
        start = time.perf_counter()
        compiled = _compile_spec(compiler, spec, self.config.max_whitespace)
        metrics.record_grammar_compile(spec.kind, time.perf_counter() - start)
        return Grammar(compiled, spec.kind)


def _compile_spec(compiler: Any, spec: ConstraintSpec, max_whitespace: int) -> Any:
    """xgrammar's compile of one spec (a worker thread)."""
    if spec.kind in ("json_schema", "json_object"):
        text = '{"type": "object"}' if spec.kind == "json_object" else spec.text
        return compiler.compile_json_schema(
            text,
            any_whitespace=max_whitespace != 0,
            max_whitespace_cnt=max_whitespace if max_whitespace > 0 else None,
        )
    if spec.kind == "regex":
        return compiler.compile_regex(spec.text)
    if spec.kind == "choice":  # JSON string literals are EBNF string literals
        options = " | ".join(json.dumps(o) for o in json.loads(spec.text))
        return compiler.compile_grammar(f"root ::= {options}")
    if "::=" in spec.text:  # EBNF (GBNF-style), as vLLM tells the two apart
        return compiler.compile_grammar(spec.text)
    return compiler.compile_lark(spec.text)
