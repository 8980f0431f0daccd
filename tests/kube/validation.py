"""What the API server refuses of built-in objects, CustomResourceDefinitions included.

Two sources, as a real API server has them:
- the Kubernetes OpenAPI schemas, as PyPI ``kubernetes-validate`` ships them (strict:
  no unknown fields), for the oldest and the newest Kubernetes version the README
  supports. A value of the wrong type is what the API server cannot even decode (400
  BadRequest); a field it does not know fails only strict field validation (400, as
  ``kubectl apply`` asks for by default); any other violation is 422 Invalid.
- for a CustomResourceDefinition, the API server's own rules on top: a structural
  schema (``type`` on every node, no ``$ref``, no ``additionalProperties`` next to
  ``properties``, nothing but value validation inside ``anyOf``/``allOf``/...),
  defaults that validate against their schema and carry no unknown fields, list-map
  keys that exist, CEL rules that compile, printer columns it can evaluate.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

from tests.kube.schemas import pruned_fields, to_json_schema

# The oldest and the newest Kubernetes the README supports (Chart.yaml's kubeVersion is
# the floor); tests/unit/test_reference.py checks that the README says the same.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")

Obj = dict[str, Any]
_OPENAPI_TYPES = ("array", "boolean", "integer", "number", "object", "string")
_UNSUPPORTED = ("$ref", "$schema", "id", "definitions", "additionalItems",
                "patternProperties", "dependencies")
# What a node inside anyOf/allOf/oneOf/not must not set, to stay structural.
_NOT_IN_JUNCTORS = {"type": "must be empty to be structural",
                    "additionalProperties": "must be undefined to be structural",
                    "default": "must be undefined to be structural",
                    "title": "must be empty to be structural",
                    "description": "must be empty to be structural",
                    "nullable": "must be false to be structural",
                    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
                    "x-kubernetes-embedded-resource": "must be false to be structural",
                    "x-kubernetes-int-or-string": "must be false to be structural",
                    "x-kubernetes-list-map-keys": "must be empty to be structural",
                    "x-kubernetes-list-type": "must be undefined to be structural"}
_COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
_SIMPLE_JSONPATH = re.compile(r'^(\.[A-Za-z0-9_-]+|\[\*\]|\[\d+\]|\[\?\(@\.[A-Za-z0-9_.-]+=='
                              r'"[^"]*"\)\])+$')


@dataclass(frozen=True)
class Finding:
    """One thing the API server objects to. ``kind``: ``decode`` (a value of the wrong
    type: 400), ``unknown`` (a field the schema lacks: 400 under strict field
    validation), ``invalid`` (422)."""

    kind: str
    field: str
    message: str
    parts: tuple[Any, ...] = ()  # where, as keys and indexes (for unknown fields)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def field_path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Validator | None:
    """kubernetes-validate's strict schema for a kind (None where that version has none);
    compiled once, not on every object as kubernetes_validate.validate does."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kv.schema_contents(f"{directory}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = kv.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def kubernetes_findings(obj: Obj) -> list[Finding]:
    """The object against the Kubernetes schemas of every supported version."""
    findings: dict[tuple[str, str], Finding] = {}
    for version in KUBERNETES_VERSIONS:
        validator = _validator(version, str(obj.get("apiVersion")), str(obj.get("kind")))
        if validator is None:
            continue
        for error in validator.iter_errors(obj):
            for finding in _classify(error):
                findings.setdefault((finding.field, finding.message), finding)
    return sorted(findings.values(), key=lambda f: (f.field, f.message))


def _classify(error: jsonschema.ValidationError) -> Iterator[Finding]:
    where = field_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties") or {})
        for name in sorted(set(error.instance) - allowed):
            here = f"{where}.{name}" if where else name
            yield Finding("unknown", here, f'unknown field "{here}"',
                          (*error.absolute_path, name))
    elif error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(w for w in wanted if w != "null") if isinstance(wanted, list) \
            else wanted
        yield Finding("decode", where, f"cannot unmarshal {_json_type(error.instance)} into "
                                       f"field {where} of type {wanted}")
    elif error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield Finding("invalid", f"{where}.{missing}" if where else missing, "Required value")
    else:
        yield Finding("invalid", where, f"Invalid value: {json.dumps(error.instance)}: "
                                        f"{error.message}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


# -- CustomResourceDefinitions ----------------------------------------------------------

def crd_findings(crd: Obj) -> list[Finding]:
    """What the API server refuses of a CRD beyond its OpenAPI schema (422 each)."""
    findings: list[Finding] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if (crd.get("metadata") or {}).get("name") != expected:
        findings.append(Finding("invalid", "metadata.name", f'Invalid value: '
                                f'{json.dumps((crd.get("metadata") or {}).get("name"))}: must '
                                f'be spec.names.plural+"."+spec.group ({expected})'))
    versions = spec.get("versions") or []
    if sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1:
        findings.append(Finding("invalid", "spec.versions",
                                "Invalid value: must have exactly one version marked as "
                                "storage version"))
    for i, version in enumerate(versions):
        if not isinstance(version, dict):
            continue
        here = f"spec.versions[{i}]"
        schema = ((version.get("schema") or {}).get("openAPIV3Schema"))
        if not isinstance(schema, dict):
            findings.append(Finding("invalid", f"{here}.schema.openAPIV3Schema",
                                    "Required value: schemas are required"))
            continue
        findings += _schema_findings(schema, f"{here}.schema.openAPIV3Schema", "root")
        for j, column in enumerate(version.get("additionalPrinterColumns") or []):
            findings += _column_findings(column, f"{here}.additionalPrinterColumns[{j}]")
    return findings


def _schema_findings(node: Any, path: str, level: str) -> list[Finding]:
    if not isinstance(node, dict):
        return []  # a node of the wrong shape: the OpenAPI schema reports it
    found: list[Finding] = []

    def add(where: str, message: str) -> None:
        found.append(Finding("invalid", f"{path}.{where}" if where else path, message))

    for key in _UNSUPPORTED:
        if key in node:
            add(key, f"Forbidden: {key} is not supported")
    kind = node.get("type")
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if not kind and not int_or_string and not preserve:
        add("type", "Required value: " + {
            "root": "must not be empty at the root",
            "item": "must not be empty for specified array items",
            "field": "must not be empty for specified object fields"}[level])
    elif kind and kind not in _OPENAPI_TYPES:
        add("type", f"Unsupported value: {json.dumps(kind)}: supported values: "
                    + ", ".join(f'"{t}"' for t in _OPENAPI_TYPES))
    if level == "root" and kind and kind != "object":
        add("type", f"Invalid value: {json.dumps(kind)}: must be object at the root")
    if int_or_string and kind:
        add("type", "Invalid value: must be empty if x-kubernetes-int-or-string is true")
    if int_or_string and preserve:
        add("x-kubernetes-preserve-unknown-fields",
            "Invalid value: true: must be false if x-kubernetes-int-or-string is true")
    if kind == "array" and "items" not in node:
        add("items", "Required value: must be specified")
    if isinstance(node.get("items"), list):
        add("items", "Forbidden: items must be a schema object and not an array")
    if node.get("uniqueItems") is True:
        add("uniqueItems", "Forbidden: uniqueItems cannot be set to true since the runtime "
                           "complexity becomes quadratic")
    if "additionalProperties" in node and "properties" in node:
        add("additionalProperties",
            "Forbidden: additionalProperties and properties are mutual exclusive")
    if level == "root" and "additionalProperties" in node:
        add("additionalProperties", "Forbidden: must not be used at the root")
    if "pattern" in node:
        try:
            re.compile(str(node["pattern"]))
        except re.error as exc:
            add("pattern", f"Invalid value: {json.dumps(node['pattern'])}: must be a valid "
                           f"regular expression, but isn't: {exc}")
    if level == "root":
        found += _root_findings(node, path)
    found += _list_type_findings(node, path)
    found += _cel_findings(node, path)
    if "default" in node:
        found += _default_findings(node, path)
    for junctor in ("anyOf", "allOf", "oneOf"):
        for i, nested in enumerate(node.get(junctor) or []):
            found += _junctor_findings(nested, f"{path}.{junctor}[{i}]", int_or_string)
    if isinstance(node.get("not"), dict):
        found += _junctor_findings(node["not"], f"{path}.not", False)
    for key, child in (node.get("properties") or {}).items():
        found += _schema_findings(child, f"{path}.properties[{key}]", "field")
    if isinstance(node.get("items"), dict):
        found += _schema_findings(node["items"], f"{path}.items", "item")
    if isinstance(node.get("additionalProperties"), dict):
        found += _schema_findings(node["additionalProperties"], f"{path}.additionalProperties",
                                  "field")
    return found


def _root_findings(node: Obj, path: str) -> list[Finding]:
    found = []
    properties = node.get("properties") or {}
    for name, wanted in (("kind", "string"), ("apiVersion", "string"), ("metadata", "object")):
        child = properties.get(name)
        if isinstance(child, dict) and child.get("type") != wanted:
            found.append(Finding("invalid", f"{path}.properties[{name}].type",
                                 f"Invalid value: {json.dumps(child.get('type'))}: must be "
                                 f"{wanted}"))
    metadata = properties.get("metadata")
    if isinstance(metadata, dict):
        extra = set(metadata) - {"type", "description", "properties"}
        extra |= set(metadata.get("properties") or {}) - {"name", "generateName"}
        if extra:
            found.append(Finding("invalid", f"{path}.properties[metadata]",
                                 "Forbidden: must not specify anything other than name and "
                                 "generateName, but metadata is implicitly specified"))
    return found


def _junctor_findings(node: Any, path: str, int_or_string: bool) -> list[Finding]:
    if not isinstance(node, dict):
        return []
    found = []
    if int_or_string and set(node) == {"type"} and node["type"] in ("integer", "string"):
        return []  # the one allowed shape: anyOf [{type: integer}, {type: string}]
    for key, message in _NOT_IN_JUNCTORS.items():
        if key in node:
            found.append(Finding("invalid", f"{path}.{key}", f"Forbidden: {message}"))
    if "metadata" in (node.get("properties") or {}):
        found.append(Finding("invalid", f"{path}.properties[metadata]",
                             "Forbidden: must not be specified in a nested context"))
    for key, child in (node.get("properties") or {}).items():
        found += _junctor_findings(child, f"{path}.properties[{key}]", False)
    if isinstance(node.get("items"), dict):
        found += _junctor_findings(node["items"], f"{path}.items", False)
    return found


def _list_type_findings(node: Obj, path: str) -> list[Finding]:
    list_type = node.get("x-kubernetes-list-type")
    if list_type is None:
        return []
    if list_type not in ("atomic", "set", "map"):
        return [Finding("invalid", f"{path}.x-kubernetes-list-type",
                        f'Unsupported value: {json.dumps(list_type)}: supported values: '
                        '"atomic", "map", "set"')]
    if node.get("type") != "array":
        return [Finding("invalid", f"{path}.type", 'Invalid value: must be array if '
                                                   'x-kubernetes-list-type is specified')]
    keys = node.get("x-kubernetes-list-map-keys")
    if list_type != "map":
        return [] if keys is None else [Finding(
            "invalid", f"{path}.x-kubernetes-list-map-keys",
            "Forbidden: must be empty if x-kubernetes-list-type is not map")]
    if not keys:
        return [Finding("invalid", f"{path}.x-kubernetes-list-map-keys",
                        "Required value: must not be empty if x-kubernetes-list-type is map")]
    items = node.get("items") if isinstance(node.get("items"), dict) else {}
    if items.get("type") != "object":
        return [Finding("invalid", f"{path}.items.type", "Invalid value: must be object if "
                                                         "parent array's x-kubernetes-list-type "
                                                         "is map")]
    found = []
    required = set(items.get("required") or [])
    for key in keys:
        prop = (items.get("properties") or {}).get(key)
        if prop is None:
            found.append(Finding("invalid", f"{path}.items.properties[{key}]",
                                 "Required value: entries for x-kubernetes-list-map-keys "
                                 "must be specified"))
        elif key not in required and "default" not in prop:
            found.append(Finding("invalid", f"{path}.items.properties[{key}]",
                                 "Invalid value: all map keys must be required or have a "
                                 "default value"))
    return found


_CEL = celpy.Environment()


def _cel_findings(node: Obj, path: str) -> list[Finding]:
    found = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        text = rule.get("rule") if isinstance(rule, dict) else None
        if not isinstance(text, str) or not text:
            found.append(Finding("invalid", f"{path}.x-kubernetes-validations[{i}].rule",
                                 "Required value: rule is not specified"))
            continue
        try:
            _CEL.compile(text)
        except celpy.CELParseError as exc:
            found.append(Finding("invalid", f"{path}.x-kubernetes-validations[{i}].rule",
                                 f"Invalid value: {json.dumps(text)}: compilation failed: "
                                 f"{str(exc).splitlines()[0]}"))
    return found


def _default_findings(node: Obj, path: str) -> list[Finding]:
    """A default must validate against its own schema and carry no unknown fields."""
    default = node["default"]
    found = []
    try:
        validator = jsonschema.Draft4Validator(
            to_json_schema({k: v for k, v in node.items() if k != "default"}))
        errors = list(validator.iter_errors(default))
    except (jsonschema.SchemaError, TypeError, ValueError):
        errors = []  # a broken schema: reported where it is broken
    for error in errors:
        where = field_path(error.absolute_path)
        found.append(Finding("invalid", f"{path}.default{'.' + where if where else ''}",
                             f"Invalid value: {json.dumps(error.instance)}: {error.message}"))
    for extra in pruned_fields(default, node):
        found.append(Finding("invalid", f"{path}.default.{extra}",
                             "Invalid value: must not have unknown fields"))
    return found


def _column_findings(column: Any, path: str) -> list[Finding]:
    if not isinstance(column, dict):
        return []
    found = []
    if not column.get("name"):
        found.append(Finding("invalid", f"{path}.name", "Required value"))
    if column.get("type") not in _COLUMN_TYPES:
        found.append(Finding("invalid", f"{path}.type",
                             f"Unsupported value: {json.dumps(column.get('type'))}: supported "
                             "values: " + ", ".join(f'"{t}"' for t in _COLUMN_TYPES)))
    json_path = column.get("jsonPath")
    if not isinstance(json_path, str) or not _SIMPLE_JSONPATH.match(json_path):
        found.append(Finding("invalid", f"{path}.jsonPath",
                             f"Invalid value: {json.dumps(json_path)}: must be a simple json "
                             "path starting with ."))
    return found
