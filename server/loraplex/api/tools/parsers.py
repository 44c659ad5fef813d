"""Tool calls out of a model's text, as it streams: vLLM's ``hermes``, ``llama3_json`` and
``mistral`` formats, and the two our constrained decoding writes (``required``, ``named``).

A parser is fed the text deltas of one choice (``feed``) and says, each time, what content
and which OpenAI tool-call deltas they add; ``finish`` releases what it held back. The whole
response is the same parser fed the whole text, so a stream's pieces always add up to the
non-streamed message. Formats (text outside the markers, before the first call, is content;
after the first call it is dropped, as vLLM does):

- ``hermes`` (Qwen 2.5/3, Hermes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  repeated;
- ``llama3_json`` (Llama 3.1+): the whole output is ``{"name": ..., "parameters": {...}}``
  objects separated by ``;``, maybe after ``<|python_tag|>``; anything else is content;
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``, or the newer
  ``[TOOL_CALLS]name[ARGS]{...}`` (or ``name{...}``), repeated;
- ``required``: a JSON array of ``{"name", "parameters"}`` objects (``tool_choice: required``);
- ``named``: the whole output is the arguments of the one named function.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from typing import Any

from loraplex.api.tools.scanner import CallScanner, ScannedCall

CallDelta = dict[str, Any]  # one entry of a chunk's delta.tool_calls, OpenAI's shape


def _held(buffer: str, marker: str) -> int:
    """Characters at the end of ``buffer`` that could be the start of ``marker``."""
    for k in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:k]):
            return k
    return 0


class ToolCallParser:
    """The shared part: the scanner's calls turned into deltas, each call's id, content."""

    name = ""
    markers: tuple[str, ...] = ()  # text that may be a special token (needs them decoded)

    def __init__(self, parallel: bool = True) -> None:
        self.scanner = CallScanner()
        self.parallel = parallel
        self.content: list[str] = []
        self.ids: list[str] = []
        self.sent: list[list[str]] = []  # each call's argument pieces sent so far

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        content = self._route(text)
        self.content.append(content)
        return content, self._deltas(final=False)

    def finish(self) -> tuple[str, list[CallDelta]]:
        content = self._flush()
        self.content.append(content)
        return content, self._deltas(final=True)

    def message(self) -> tuple[str | None, list[tuple[str, str, str]]]:
        """After ``finish``: (content, [(id, name, arguments)]); content is None when there
        are calls and no text besides them."""
        calls = [
            (self.ids[i], str(self._calls()[i].name), "".join(self.sent[i]))
            for i in range(len(self.ids))
        ]
        content = "".join(self.content)
        return (content if content.strip() or not calls else None), calls

    def new_id(self) -> str:
        return f"call_{uuid.uuid4().hex[:24]}"

    # ---- what formats define ----------------------------------------------------------

    def _route(self, text: str) -> str:
        """Feed ``text``'s call JSON to the scanner; return its content (minus what is held)."""
        raise NotImplementedError

    def _flush(self) -> str:
        return ""

    def _calls(self) -> list[ScannedCall]:
        calls = self.scanner.calls
        return calls if self.parallel else calls[:1]

    # ---- deltas -----------------------------------------------------------------------

    def _deltas(self, final: bool) -> list[CallDelta]:
        deltas: list[CallDelta] = []
        for i, call in enumerate(self._calls()):
            if call.name is None:
                break  # calls go out in order, each once its name is known
            if i == len(self.ids):
                self.ids.append(self.new_id())
                self.sent.append([])
                header = {"name": call.name, "arguments": ""}
                deltas.append({"index": i, "id": self.ids[i], "type": "function"})
                deltas[-1]["function"] = header
            piece = self._new_arguments(call, self.sent[i], final or call.done)
            if piece:
                self.sent[i].append(piece)
                deltas.append({"index": i, "function": {"arguments": piece}})
        return deltas

    @staticmethod
    def _new_arguments(call: ScannedCall, sent: list[str], ended: bool) -> str:
        if call.quoted:  # a JSON string: all at once, decoded
            return call.arguments if (call.arguments_done or ended) and not sent else ""
        done = sum(len(piece) for piece in sent)
        piece = call.raw_arguments(done)
        if ended and not done and not piece:
            return "{}"  # a call without arguments takes none
        return piece


class HermesParser(ToolCallParser):
    name = "hermes"
    start, end = "<tool_call>", "</tool_call>"
    markers = (start, end)

    def __init__(self, parallel: bool = True) -> None:
        super().__init__(parallel)
        self._mode, self._buffer = "content", ""

    def _route(self, text: str) -> str:
        buffer, content = self._buffer + text, []
        while True:
            marker = self.end if self._mode == "call" else self.start
            at = buffer.find(marker)
            cut = at if at >= 0 else len(buffer) - _held(buffer, marker)
            if self._mode == "content":
                content.append(buffer[:cut])
            elif self._mode == "call":
                self.scanner.feed(buffer[:cut])
            if at < 0:
                self._buffer = buffer[cut:]
                return "".join(content)
            buffer = buffer[at + len(marker) :]
            self._mode = "between" if self._mode == "call" else "call"

    def _flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        if self._mode == "call":
            self.scanner.feed(rest)
        return rest if self._mode == "content" else ""


class Llama3JsonParser(ToolCallParser):
    name = "llama3_json"
    tag = "<|python_tag|>"
    markers = (tag,)

    def __init__(self, parallel: bool = True) -> None:
        super().__init__(parallel)
        self._mode, self._buffer = "undecided", ""

    def _route(self, text: str) -> str:
        if self._mode == "json":
            self.scanner.feed(text)
            return ""
        if self._mode == "content":
            return text
        self._buffer += text
        head = self._buffer.lstrip()
        if not head or (self.tag.startswith(head) and head != self.tag):
            return ""  # only blanks, or maybe the tag: wait
        if head.startswith(self.tag) or head.startswith("{"):
            self._mode = "json"
            self.scanner.feed(head.removeprefix(self.tag))
            return ""
        self._mode = "content"
        return self._flush()

    def _flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest if self._mode != "json" else ""


class MistralParser(ToolCallParser):
    name = "mistral"
    start, args = "[TOOL_CALLS]", "[ARGS]"
    markers = (start, args)

    def __init__(self, parallel: bool = True) -> None:
        super().__init__(parallel)
        self._mode, self._buffer, self._name = "content", "", ""

    def new_id(self) -> str:  # Mistral's templates want 9 alphanumerics
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))

    def _route(self, text: str) -> str:
        content = []
        for c in text:
            content.append(self._char(c))
        return "".join(content)

    def _char(self, c: str) -> str:
        if self._mode == "json":  # the older format: a JSON array of call objects
            self.scanner.feed(c)
            return ""
        if self._mode == "arguments":  # the newer: "{...}" after the name
            self.scanner.feed(c)
            call = self.scanner.calls[-1]
            if call.arguments_done:
                self.scanner.feed("}")
                self._mode = "between"
            return ""
        self._buffer += c
        if self._mode in ("content", "between"):
            if self._buffer.endswith(self.start):
                out = self._buffer[: -len(self.start)] if self._mode == "content" else ""
                self._mode, self._buffer, self._name = "marker", "", ""
                return out
            keep = _held(self._buffer, self.start)
            out = self._buffer[: len(self._buffer) - keep]
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return out if self._mode == "content" else ""
        if self._mode == "marker" and not self._buffer.strip():
            return ""
        if self._mode == "marker" and self._buffer.lstrip()[0] in "[{":
            self._mode = "json"
            self.scanner.feed(self._buffer.lstrip())
            return ""
        self._mode = "name"  # the newer format: the name, then [ARGS] or the arguments' "{"
        if self._buffer.endswith(self.args) or c == "{":
            name = self._buffer.removesuffix(self.args).removesuffix("{").strip()
            self.scanner.feed('{"name": ' + json.dumps(name) + ', "arguments": ')
            self._mode, self._buffer = "arguments", ""
            if c == "{":
                self.scanner.feed(c)
        return ""

    def _flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest if self._mode == "content" else ""


class RequiredParser(ToolCallParser):
    """``tool_choice: "required"``: the constrained output is the JSON array of calls."""

    name = "required"

    def _route(self, text: str) -> str:
        self.scanner.feed(text)
        return ""


class NamedParser(ToolCallParser):
    """A named ``tool_choice``: the constrained output is that function's arguments."""

    name = "named"

    def __init__(self, function: str) -> None:
        super().__init__(parallel=False)
        self.scanner.feed('{"name": ' + json.dumps(function) + ', "arguments": ')

    def _route(self, text: str) -> str:
        self.scanner.feed(text)
        return ""


PARSERS: dict[str, type[ToolCallParser]] = {
    parser.name: parser for parser in (HermesParser, Llama3JsonParser, MistralParser)
}
