"""The CustomResourceDefinitions, generated from the resource models.

``python -m wsgate_operator.crds [DIR]`` writes ``crds/wsroutes.yaml`` and
``crds/wsconsumers.yaml`` from the spec models (resources.py) and the status models
(status.py); a test fails when the committed files differ from what the models
generate, so the API server and the compiler can never disagree on a field.
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
from .status import WsConsumerStatus, WsRouteStatus

Schema = dict[str, Any]

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
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        # JSON Schema's numeric exclusive bound becomes OpenAPI v3's bound plus a boolean.
        # A node is converted twice when an optional field's variant is merged back into
        # it, and a bool is an int in Python: only a number is a bound to convert.
        if _is_number(node.get(flag)):
            node[bound] = node.pop(flag)
            node[flag] = True
    if "default" in node:
        default = _without_nulls(node["default"])
        # An empty default says nothing the absence of the field does not: leaving it out
        # keeps stored objects lean and `kubectl get` columns empty rather than `[]`.
        if default is None or default == {} or default == []:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _without_nulls(value: Any) -> Any:
    """A default without null or empty-list members (absent means the same)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None and v != []}
    return value


# What every Kubernetes object's top-level fields mean, as `kubectl explain` shows them.
_CONVENTIONS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
_API_VERSION: Schema = {
    "type": "string",
    "description": "APIVersion defines the versioned schema of this representation of an "
                   "object. Servers should convert recognized schemas to the latest internal "
                   f"value, and may reject unrecognized values. More info: {_CONVENTIONS}"
                   "#resources"}
_KIND: Schema = {
    "type": "string",
    "description": "Kind is a string value representing the REST resource this object "
                   "represents. Servers may infer this from the endpoint the client submits "
                   f"requests to. Cannot be updated. In CamelCase. More info: {_CONVENTIONS}"
                   "#types-kinds"}
_METADATA: Schema = {
    "type": "object",
    "description": f"Standard object's metadata. More info: {_CONVENTIONS}#metadata"}


def _crd(kind: str, plural: str, short: str, spec: type[BaseModel], status: type[BaseModel],
         described: str, spec_described: str, columns: list[dict[str, Any]]
         ) -> dict[str, Any]:
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
                        "apiVersion": _API_VERSION,
                        "kind": _KIND,
                        "metadata": _METADATA,
                        "spec": {"description": spec_described, **{
                            k: v for k, v in structural(spec).items() if k != "description"}},
                        "status": structural(status),
                    },
                }},
            }],
        },
    }


def _ready(condition: str, described: str) -> dict[str, Any]:
    return {"name": "Ready", "type": "string",
            "jsonPath": f'.status.conditions[?(@.type=="{condition}")].status',
            "description": f"{described} (the {condition} condition)"}


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
        "description": "Time since the object was created."}

CRDS: dict[str, dict[str, Any]] = {
    "wsroutes.yaml": _crd(
        "WsRoute", "wsroutes", "wsr", WsRouteSpec, WsRouteStatus,
        "A WsRoute says which WebSocket handshakes (hosts, paths) go to which backend "
        "Service, how they authenticate, and with what limits.",
        "Which handshakes the route takes, where it sends them, how they authenticate.",
        # The API server shows the first value a column's JSONPath finds: a list column
        # is the list itself (JSON; none when the route has no hosts), and Path is the
        # first path (`kubectl get -o yaml` shows them all).
        [{"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts",
          "description": "The host names the route serves; none: every host."},
         {"name": "Path", "type": "string", "jsonPath": ".spec.paths[*].value",
          "description": "The route's first path."},
         {"name": "Backend", "type": "string", "jsonPath": ".spec.backend.service.name",
          "description": "The backend Service."},
         {"name": "Endpoints", "type": "integer", "jsonPath": ".status.endpoints",
          "description": "Ready endpoints of the backend Service."},
         _ready("Programmed", "Whether every running proxy pod runs this generation"),
         _AGE],
    ),
    "wsconsumers.yaml": _crd(
        "WsConsumer", "wsconsumers", "wsc", WsConsumerSpec, WsConsumerStatus,
        "A WsConsumer is an identity that WebSocket clients authenticate as, with its "
        "credentials in labelled Secrets.",
        "Who the consumer is to upstreams, and where its credentials are.",
        [{"name": "Username", "type": "string", "jsonPath": ".status.username",
          "description": "The name upstreams see (X-Consumer-Username)."},
         {"name": "Credentials", "type": "integer", "jsonPath": ".status.credentials",
          "description": "Usable credentials."},
         _ready("Ready", "Whether the consumer can authenticate"), _AGE],
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
