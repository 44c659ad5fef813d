"""Tool-call objects read out of JSON text as it grows, one character at a time.

A call object is ``{"name": "f", "arguments": {...}}`` (``"parameters"`` is the same key:
Llama's and our constrained format use it). Outside an object every character but ``{`` is
skipped, so a JSON array of calls, calls separated by ``;`` or by newlines all read the same.
The arguments are kept as the raw text of their JSON value, so what a stream sends piece by
piece is exactly what the whole response holds; a value that is a JSON string (some models
quote their arguments) is decoded once it is complete.

Each character costs O(1): a whole output is read in time linear in its length, however the
client's stream chops it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

ARGUMENT_KEYS = ("arguments", "parameters")
_KEY, _KEY_TEXT, _COLON, _VALUE_START, _VALUE, _AFTER = range(6)


@dataclass
class ScannedCall:
    """One call as far as it has been read: ``name`` once its string closed; the raw JSON
    text of its arguments value so far (complete when ``arguments_done``)."""

    name: str | None = None
    chars: list[str] = field(default_factory=list)  # the arguments value's raw characters
    quoted: bool = False  # that value is a JSON string: decoded once complete
    arguments_done: bool = False
    done: bool = False

    def raw_arguments(self, start: int = 0) -> str:
        """The raw arguments text from character ``start`` on (O(length of the result))."""
        return "".join(self.chars[start:])

    @property
    def arguments(self) -> str:
        """The arguments to report: the raw JSON text (``{}`` if none was given), or the
        decoded string of a quoted value."""
        raw = self.raw_arguments().strip()
        if not self.quoted:
            return raw or "{}"
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class CallScanner:
    """Reads the call objects of text fed in pieces (``feed``); ``calls`` grows as they start."""

    def __init__(self) -> None:
        self.calls: list[ScannedCall] = []
        self._depth = 0  # bracket depth; 0: between calls, 1: a call object's own level
        self._in_string = False
        self._escape = False
        self._phase = _KEY  # where we are in the call object's own "key": value pairs
        self._key: list[str] = []
        self._field: str | None = None  # the value being read: "name", "arguments" or None
        self._kind = ""  # that value's kind: string, container or scalar
        self._name: list[str] = []

    def feed(self, text: str) -> None:
        for char in text:
            self._char(char)

    def _char(self, c: str) -> None:
        if self._depth == 0:
            if c == "{":
                self.calls.append(ScannedCall())
                self._depth, self._phase = 1, _KEY
            return
        call = self.calls[-1]
        if self._in_string:
            self._string_char(call, c)
            return
        if self._phase == _VALUE_START:
            if c.isspace():
                return
            self._phase = _VALUE
            self._kind = "string" if c == '"' else "container" if c in "{[" else "scalar"
            call.quoted = call.quoted or (self._field == "arguments" and c == '"')
        if self._phase == _VALUE:
            if self._kind == "scalar" and self._depth == 1 and c in ",}":
                self._end_value(call)
            else:
                self._capture(call, c)
        if c == '"':
            self._in_string = True
            if self._phase == _KEY:
                self._phase, self._key = _KEY_TEXT, []
        elif c == ":" and self._phase == _COLON:
            key = "".join(self._key)
            named = "name" if key == "name" else None
            self._field = "arguments" if key in ARGUMENT_KEYS else named
            self._phase, self._name = _VALUE_START, []
        elif c in "{[":
            self._depth += 1
        elif c in "}]":
            self._depth -= 1
            if self._phase == _VALUE and self._kind == "container" and self._depth == 1:
                self._end_value(call)
            if self._depth == 0:
                call.done = True
        elif c == "," and self._phase == _AFTER and self._depth == 1:
            self._phase = _KEY

    def _string_char(self, call: ScannedCall, c: str) -> None:
        if self._phase == _VALUE:
            self._capture(call, c)
        if self._escape:
            self._escape = False
        elif c == "\\":
            self._escape = True
        elif c == '"':
            self._in_string = False
            if self._phase == _KEY_TEXT:
                self._phase = _COLON
            elif self._phase == _VALUE and self._kind == "string" and self._depth == 1:
                self._end_value(call)
            return
        if self._phase == _KEY_TEXT:
            self._key.append(c)

    def _capture(self, call: ScannedCall, c: str) -> None:
        if self._field == "arguments":
            call.chars.append(c)
        elif self._field == "name":
            self._name.append(c)

    def _end_value(self, call: ScannedCall) -> None:
        if self._field == "name":
            raw = "".join(self._name).strip()
            try:
                call.name = str(json.loads(raw))
            except ValueError:
                call.name = raw.strip('"')
        elif self._field == "arguments":
            call.arguments_done = True
        self._phase, self._field = _AFTER, None
