"""The CustomResourceDefinitions, generated from the resource models.

``python -m wsgate_operator.crds [DIR]`` writes ``crds/wsroutes.yaml`` and
``crds/wsconsumers.yaml``; a test fails when the committed files differ from what the
models generate, so the API server and the compiler can never disagree on a field.
Pydantic's JSON Schema becomes a structural OpenAPI v3 schema: references inlined,
optional fields plain, ``int | str`` as ``x-kubernetes-int-or-string``, CEL rules kept.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .resources import API_GROUP, API_VERSION, WsConsumerSpec, WsRouteSpec

Schema = dict[str, Any]

_CONDITION: Schema = {
    "type": "object",
    "description": "A condition of the object, as Kubernetes conditions go.",
    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
    "properties": {
        "type": {"type": "string", "description": "The aspect the condition is about."},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                   "description": "Whether it holds."},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "The generation the condition was set for."},
        "lastTransitionTime": {"type": "string", "format": "date-time",
                               "description": "When the status last changed."},
        "reason": {"type": "string", "description": "A CamelCase word for why."},
        "message": {"type": "string", "description": "What is the matter, for a person."},
    },
}


def _conditions(described: str) -> Schema:
    return {"type": "array", "description": described, "items": _CONDITION,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


_GENERATION: Schema = {"type": "integer", "format": "int64",
                       "description": "The generation this status was written for."}

ROUTE_STATUS: Schema = {
    "type": "object",
    "description": "What the operator made of the route.",
    "properties": {
        "observedGeneration": _GENERATION,
        "conditions": _conditions(
            "Accepted: the spec is valid and compiled. ResolvedRefs: the backend Service and "
            "port (and TLS Secrets) were found. Programmed: every ready proxy runs a config "
            "that includes this generation."),
        "endpoints": {"type": "integer", "description": "Ready endpoints of the backend."},
        "proxies": {
            "type": "object", "description": "Proxies running this generation, of all ready.",
            "properties": {"synced": {"type": "integer"}, "total": {"type": "integer"}},
        },
    },
}

CONSUMER_STATUS: Schema = {
    "type": "object",
    "description": "What the operator made of the consumer.",
    "properties": {
        "observedGeneration": _GENERATION,
        "conditions": _conditions(
            "Ready: the consumer can authenticate. ResolvedRefs: every credential's Secret "
            "was found, labelled and complete."),
        "username": {"type": "string", "description": "The name upstreams see."},
        "credentials": {"type": "integer", "description": "Usable credentials."},
    },
}


def structural(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema as a Kubernetes structural schema."""
    schema = model.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    return _convert(schema, defs)


def _convert(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[1]])
        node = {**target, **node}  # the field's own description and default win
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        types = {v.get("type") for v in variants}
        if types == {"integer", "string"}:
            node["x-kubernetes-int-or-string"] = True
        elif len(variants) == 1:
            node = {**_convert(variants[0], defs), **node}
        else:
            raise ValueError(f"no structural form for {variants}")
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if isinstance(node.get("exclusiveMinimum"), (int, float)):  # JSON Schema -> OpenAPI v3
        node["minimum"] = node.pop("exclusiveMinimum")
        node["exclusiveMinimum"] = True
    if "default" in node:
        default = _without_nulls(node["default"])
        if default is None or default == {}:
            del node["default"]
        else:
            node["default"] = default
    if "properties" in node:
        node["properties"] = {k: _convert(v, defs) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _convert(node[key], defs)
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    first = {k: node.pop(k) for k in ("description", "type") if k in node}
    return {**first, **node}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _crd(kind: str, plural: str, short: str, spec: type[BaseModel], status: Schema,
         described: str, columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}",
                     "labels": {"app.kubernetes.io/name": "wsgate",
                                "app.kubernetes.io/part-of": "wsgate"}},
        "spec": {
            "group": API_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": [short],
                      "categories": ["wsgate"]},
            "scope": "Namespaced",
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": described,
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": structural(spec),
                        "status": status,
                    },
                }},
            }],
        },
    }


def _ready(condition: str) -> dict[str, Any]:
    return {"name": "Ready", "type": "string",
            "jsonPath": f'.status.conditions[?(@.type=="{condition}")].status'}


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

CRDS: dict[str, dict[str, Any]] = {
    "wsroutes.yaml": _crd(
        "WsRoute", "wsroutes", "wsr", WsRouteSpec, ROUTE_STATUS,
        "A WsRoute says which WebSocket handshakes (hosts, paths) go to which backend "
        "Service, how they authenticate, and with what limits.",
        [{"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts"},
         {"name": "Paths", "type": "string", "jsonPath": ".spec.paths[*].value"},
         {"name": "Backend", "type": "string", "jsonPath": ".spec.backend.service.name"},
         {"name": "Endpoints", "type": "integer", "jsonPath": ".status.endpoints"},
         _ready("Programmed"), _AGE],
    ),
    "wsconsumers.yaml": _crd(
        "WsConsumer", "wsconsumers", "wsc", WsConsumerSpec, CONSUMER_STATUS,
        "A WsConsumer is an identity that WebSocket clients authenticate as, with its "
        "credentials in labelled Secrets.",
        [{"name": "Username", "type": "string", "jsonPath": ".status.username"},
         {"name": "Credentials", "type": "integer", "jsonPath": ".status.credentials"},
         _ready("Ready"), _AGE],
    ),
}

HEADER = "# Generated from operator/wsgate_operator/resources.py by\n" \
         "# `python -m wsgate_operator.crds`; do not edit by hand.\n"


def render(name: str) -> str:
    return HEADER + yaml.safe_dump(CRDS[name], sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("crds")
    directory.mkdir(parents=True, exist_ok=True)
    for name in CRDS:
        (directory / name).write_text(render(name))
        print(f"wrote {directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
