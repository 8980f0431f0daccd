"""Admitting custom resources as the API server does with a structural CRD schema:
unknown fields pruned, defaults applied, then validated (OpenAPI v3 ~ JSON Schema
draft 4, with the Kubernetes extensions that matter here), and the CEL rules
(x-kubernetes-validations) evaluated on the defaulted object (cel-python)."""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
import jsonschema

Schema = dict[str, Any]


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema draft 4, for jsonschema."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    if node.get("format") == "date-time":
        out.pop("format")
    return out


def _prune_and_default(value: Any, schema: Schema) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        if properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            value = {k: v for k, v in value.items() if k in properties}
        for key, sub in (properties or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _prune_and_default(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            value = {k: _prune_and_default(v, extra) for k, v in value.items()}
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_prune_and_default(v, schema["items"]) for v in value]
    return value


def pruned_fields(value: Any, schema: Schema, path: str = "") -> list[str]:
    """The fields of a value that the schema does not know (pruning would drop them)."""
    found: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                found += pruned_fields(item, properties[key], here)
            elif isinstance(extra, dict):
                found += pruned_fields(item, extra, here)
            elif properties is not None and not schema.get(
                    "x-kubernetes-preserve-unknown-fields"):
                found.append(here)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return found


def _path(parts: Any) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<root>"


_CEL = celpy.Environment()


@functools.lru_cache(maxsize=1024)
def _cel_program(rule: str) -> celpy.Runner:
    """A rule compiled once (parsing it is most of the cost of evaluating it)."""
    return _CEL.program(_CEL.compile(rule))


_ABSENT = object()


def _cel_errors(value: Any, schema: Schema, path: list[Any],
                old: Any = _ABSENT) -> list[tuple[str, str]]:
    """Evaluate every x-kubernetes-validations rule where its field is present. On an
    update, a value equal to the one stored is not validated again (the API server's
    validation ratcheting, on by default since Kubernetes 1.30: a status write does not
    evaluate the spec's rules)."""
    if old is not _ABSENT and value == old:
        return []
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        result = _cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            errors.append((_path(path), rule.get("message") or f"failed rule: {rule['rule']}"))
    if isinstance(value, dict):
        olds = old if isinstance(old, dict) else {}
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += _cel_errors(value[key], sub, [*path, key], olds.get(key, _ABSENT))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        # Items of a list are ratcheted by position only where the list is a set or
        # keeps its order; simpler and stricter: a changed list validates every item.
        for i, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], [*path, i])
    return errors


class CrdSchema:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._validator = jsonschema.Draft4Validator(to_json_schema(schema))

    def unknown_fields(self, obj: dict[str, Any]) -> list[str]:
        """Fields the schema does not know: pruned, or refused under strict validation."""
        return [f for f in pruned_fields(obj, self.schema)
                if f.split(".")[0].split("[")[0] != "metadata"]

    def admit(self, obj: dict[str, Any], stored: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The object pruned and defaulted, and what is wrong with it (``stored``: the
        object it updates, whose unchanged values are not held to the CEL rules again)."""
        metadata = obj.get("metadata")
        admitted = _prune_and_default(copy.deepcopy(obj), self.schema)
        admitted["metadata"] = metadata  # metadata is the API server's own business
        errors = sorted(
            (_path(error.absolute_path), error.message)
            for error in self._validator.iter_errors(admitted)
        )
        if not errors:  # the API server runs CEL on schema-valid objects only
            errors = _cel_errors(admitted, self.schema, [],
                                 _ABSENT if stored is None else stored)
        return admitted, errors


class SchemaSet:
    """CRD schemas by (group, version, plural)."""

    def __init__(self) -> None:
        self._schemas: dict[tuple[str, str, str], CrdSchema] = {}

    def add_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            self._schemas[(spec["group"], version["name"], spec["names"]["plural"])] = \
                CrdSchema(schema)

    def get(self, key: tuple[str, str, str]) -> CrdSchema | None:
        return self._schemas.get(key)

    def remove_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self._schemas.pop((spec["group"], version["name"], spec["names"]["plural"]), None)
