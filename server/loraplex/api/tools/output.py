"""A chat choice's text as OpenAI shows tool calls: ``message.tool_calls`` with
``finish_reason: "tool_calls"``, or, streamed, ``delta.tool_calls`` pieces — the first of a
call with its ``id``, ``type`` and ``function.name`` (``arguments: ""``), then pieces of
``function.arguments`` by ``index``. A choice's streamed pieces concatenate to its
non-streamed message: both come from one parser fed the same text."""

from __future__ import annotations

from typing import Any

from loraplex.api.tools.parsers import CallDelta
from loraplex.api.tools.plan import ToolPlan
from loraplex.api.tools.schemas import FunctionCall, ToolCall


def finish_reason(plan: ToolPlan, reason: str | None, called: bool) -> str | None:
    """OpenAI's: "tool_calls" when the model stopped after calling (a named tool_choice
    keeps "stop", as OpenAI's does); "length" stays "length"."""
    if called and reason == "stop" and plan.choice != "named":
        return "tool_calls"
    return reason


def tool_message(
    plan: ToolPlan, text: str, reason: str | None
) -> tuple[str | None, list[ToolCall] | None, str | None]:
    """(content, tool_calls, finish_reason) of a whole choice."""
    parser = plan.new_parser()
    if parser is None:
        return text, None, reason
    parser.feed(text)
    parser.finish()
    content, calls = parser.message()
    if not calls:
        return text, None, reason
    tool_calls = [
        ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
        for call_id, name, arguments in calls
    ]
    return content, tool_calls, finish_reason(plan, reason, True)


class ToolStream:
    """The stream deltas of one choice (``deltas`` per engine output)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = plan.new_parser()
        self.called = False

    def deltas(self, text: str, finished: bool) -> list[dict[str, Any]]:
        """The ``delta`` objects ``text`` adds (and, when ``finished``, what was held back)."""
        if self.parser is None:
            return [{"content": text}] if text else []
        content, calls = self.parser.feed(text)
        if finished:
            more, later = self.parser.finish()
            content, calls = content + more, calls + later
        out: list[dict[str, Any]] = [{"content": content}] if content else []
        if calls:
            self.called = True
            out.append({"tool_calls": _coalesce(calls)})
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        return finish_reason(self.plan, reason, self.called)


def _coalesce(calls: list[CallDelta]) -> list[CallDelta]:
    """One entry per call index: a call's header and its argument pieces merged."""
    merged: dict[int, CallDelta] = {}
    for delta in calls:
        entry = merged.get(delta["index"])
        if entry is None:
            merged[delta["index"]] = {**delta, "function": dict(delta["function"])}
        else:
            function = entry["function"]
            function["arguments"] = function.get("arguments", "") + delta["function"]["arguments"]
    return list(merged.values())
