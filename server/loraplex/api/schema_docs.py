"""Constraints the OpenAPI schema documents but pydantic does not enforce.

Value ranges are checked once, at run time, by :class:`~loraplex.engine.request.params.
SamplingParams` and the routes, whose :class:`ParameterError` names the parameter in a 400.
The schema must still say what those checks accept, so that a client generator or a fuzzer
(schemathesis) that follows it sends only requests the server takes: ``doc(...)`` adds JSON
Schema keywords (``minimum``, ``maxLength``, ``enum``...) to a field's schema without adding a
second, differently worded check. Use it in ``Annotated[T, doc(...)]``, also on list items.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field


def doc(**keywords: Any) -> Any:
    """JSON Schema keywords for a field (Python names: ``exclusiveMinimum`` etc. as given)."""
    return Field(json_schema_extra=keywords)
