"""OpenAI tool calling: the request's tools and tool_choice (``schemas``), what they make of
one chat request (``plan``: a constraint, a parser, the template's tools), the parsers of
tool-call text (``parsers``, over ``scanner``) and the response and stream shapes
(``output``)."""
