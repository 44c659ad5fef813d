"""PEFT's module-name rules (``target_modules``, ``exclude_modules``, ``rank_pattern`` and
``alpha_pattern`` keys), run on RE2, a linear-time regex engine.

These regexes come from clients. Python's ``re`` backtracks: ``"mode(.|.)*Q"`` takes seconds on
a 31-character module name (doubling with each character) inside one C call that holds the GIL,
so one upload froze the whole server. RE2 matches in time linear in the name, whatever the
pattern, and its compiled programs are bounded (``max_mem``, repetition counts up to 1000).

PEFT's semantics (peft ``check_target_module_exists`` / ``get_pattern_key``):

- a string ``target_modules`` / ``exclude_modules`` must match the whole module name
  (``all-linear`` targets every projection but the output embedding);
- a list entry equals the module name or its last dotted components;
- a pattern key ``k`` matches a module name that is ``k`` or ends with ``.k`` (PEFT:
  ``re.match(rf"(.*\\.)?({k})$", name)``); the first matching key, in the file's order, wins.

A pattern must compile in Python's ``re`` too (so PEFT reads it as we do); what RE2 cannot run
in linear time (lookaround, backreferences) is refused with a message saying so.
"""

from __future__ import annotations

import functools
import re

import re2

from loraplex.adapters.errors import AdapterValidationError

MAX_PATTERN_CHARS = 256  # one regex
MAX_PATTERN_KEYS = 256  # keys of one rank_pattern / alpha_pattern: bounds the matches per module
ALL_LINEAR = "all-linear"
# Module names (equal to a module's name or to its last dotted components), or one regex that
# must match the whole name.
Targets = tuple[str, ...] | str

__all__ = [
    "ALL_LINEAR",
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_KEYS",
    "Targets",
    "check_key",
    "check_regex",
    "first_match",
    "matches",
]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # refusals are reported to the client, not logged by RE2
_OPTIONS.max_mem = 1 << 20  # program + lazy DFA of one pattern: plenty for 256 characters


@functools.lru_cache(maxsize=4 * MAX_PATTERN_KEYS)
def _compiled(pattern: str) -> re2._Regexp:
    """Each distinct pattern is compiled once per process, for its check and every match."""
    return re2.compile(pattern, _OPTIONS)


def _key_regex(key: str) -> str:
    """A pattern key as the whole-name regex it is matched as."""
    return rf"(?:.*\.)?(?:{key})"


def check_regex(what: str, pattern: str, runs_as: str | None = None) -> None:
    """``pattern`` must be short, valid for Python's ``re`` (PEFT's reading of it) and, in the
    form it runs as (``runs_as``, default itself), runnable by RE2."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise AdapterValidationError(f"{what}: pattern longer than {MAX_PATTERN_CHARS} characters")
    try:
        re.compile(pattern)  # compiled only, never run
    except re.error as exc:
        raise AdapterValidationError(f"{what}: invalid regular expression {pattern!r}") from exc
    try:
        _compiled(pattern if runs_as is None else runs_as)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "rejected"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise AdapterValidationError(
            f"{what}: regular expression {pattern!r} is not supported ({reason}): patterns "
            "run on a linear-time engine, without lookaround or backreferences"
        ) from exc


def check_key(what: str, key: str) -> None:
    """A ``rank_pattern`` / ``alpha_pattern`` key, checked alone and as the regex it runs as."""
    check_regex(what, key, _key_regex(key))


def matches(targets: Targets, module: str) -> bool:
    """Whether ``targets`` (PEFT's ``target_modules`` or ``exclude_modules``) names ``module``."""
    if isinstance(targets, str):
        return targets == ALL_LINEAR or _compiled(targets).fullmatch(module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def first_match(keys: tuple[tuple[str, float], ...], module: str, default: float) -> float:
    """The value of the first key (in the file's order) matching ``module``, else ``default``."""
    for key, value in keys:
        if _compiled(_key_regex(key)).fullmatch(module) is not None:
            return value
    return default
