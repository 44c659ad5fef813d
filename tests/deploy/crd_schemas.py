"""JSON schemas for the custom resources that kubernetes-validate has no schema for, written from
their published APIs (only the fields these manifests may use; every object is closed, so a
misspelt or misplaced field fails):

- InferencePool ``inference.networking.k8s.io/v1``: the Gateway API Inference Extension's CRD
  (kubernetes-sigs/gateway-api-inference-extension, config/crd/bases/
  inference.networking.k8s.io_inferencepools.yaml; ``api/v1/inferencepool_types.go``):
  ``spec.selector.matchLabels``, ``spec.targetPorts[].number`` (exactly one),
  ``spec.endpointPickerRef{group, kind, name, port{number}, failureMode}``.
- HTTPRoute ``gateway.networking.k8s.io/v1`` (Gateway API standard channel): ``parentRefs``,
  ``rules[].matches[].path{type, value}``, ``rules[].backendRefs[]``, ``rules[].timeouts``.
- ServiceMonitor ``monitoring.coreos.com/v1`` (Prometheus Operator): ``selector``,
  ``endpoints[]{port, path, interval, authorization{type, credentials{name, key}}}``
  (``SafeAuthorization``: the credentials are a key of a Secret in the ServiceMonitor's
  namespace; type ``Bearer`` by default, ``Basic`` refused).
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 253}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
LABELS = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": LABELS},
    "additionalProperties": False,
}


def closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def resource(spec: dict[str, Any]) -> dict[str, Any]:
    return closed(
        {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": METADATA,
         "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )  # fmt: skip


INFERENCE_POOL = resource(
    closed(
        {
            "selector": closed({"matchLabels": {**LABELS, "minProperties": 1}}, ("matchLabels",)),
            "targetPorts": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": closed({"number": PORT}, ("number",)),
            },
            "endpointPickerRef": closed(
                {
                    "group": {"type": "string", "maxLength": 253},
                    "kind": {"type": "string", "minLength": 1, "maxLength": 63},
                    "name": NAME,
                    "port": closed({"number": PORT}, ("number",)),
                    "failureMode": {"enum": ["FailOpen", "FailClose"]},
                },
                ("name",),
            ),
        },
        ("selector", "targetPorts", "endpointPickerRef"),
    )
)

BACKEND_REF = closed(
    {
        "group": {"type": "string"},
        "kind": {"type": "string"},
        "name": NAME,
        "namespace": NAME,
        "port": PORT,
        "weight": {"type": "integer", "minimum": 0},
    },
    ("name",),
)
DURATION = {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"}
HTTP_ROUTE = resource(
    closed(
        {
            "parentRefs": {
                "type": "array",
                "items": closed(
                    {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": NAME,
                        "namespace": NAME,
                        "sectionName": NAME,
                        "port": PORT,
                    },
                    ("name",),
                ),
            },
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {
                "type": "array",
                "items": closed(
                    {
                        "matches": {
                            "type": "array",
                            "items": closed(
                                {
                                    "path": closed(
                                        {
                                            "type": {
                                                "enum": [
                                                    "Exact",
                                                    "PathPrefix",
                                                    "RegularExpression",
                                                ]
                                            },
                                            "value": {"type": "string", "pattern": "^/"},
                                        }
                                    )
                                }
                            ),
                        },
                        "backendRefs": {"type": "array", "items": BACKEND_REF},
                        "timeouts": closed({"request": DURATION, "backendRequest": DURATION}),
                    }
                ),
            },
        }
    )
)

SERVICE_MONITOR = resource(
    closed(
        {
            "selector": closed({"matchLabels": LABELS}),
            "namespaceSelector": closed(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array"}}
            ),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": closed(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "scheme": {"enum": ["http", "https"]},
                        "authorization": closed(
                            {
                                "type": {"type": "string", "not": {"pattern": "(?i)^basic$"}},
                                "credentials": closed(
                                    {"name": NAME, "key": NAME, "optional": {"type": "boolean"}},
                                    ("name", "key"),
                                ),
                            },
                            ("credentials",),
                        ),
                    }
                ),
            },
        },
        ("selector", "endpoints"),
    )
)

SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}
