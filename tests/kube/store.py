"""The object store behind the API emulator: what an API server keeps, and its rules.

Objects carry uid, creationTimestamp, resourceVersion and generation; every change
gets the next resourceVersion and goes into an event log that watches replay from
(410 Gone when asked for more than the log holds). Writes honour optimistic
concurrency (409 on a stale resourceVersion), keep `.status` and the rest apart for
resources with a status subresource, and custom resources are validated against
their CRD's schema, with its defaults applied and unknown fields pruned; built-in
objects (CustomResourceDefinitions among them) against the Kubernetes schemas and the
API server's rules for CRDs (tests/kube/validation.py). Unknown fields are refused when
the request asks for strict field validation (``fieldValidation=Strict``, what
``kubectl apply`` sends by default) and dropped otherwise, as the API server does.
"""

from __future__ import annotations

import base64
import copy
import datetime
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tests.kube import validation
from tests.kube.patches import PatchError, apply_patch
from tests.kube.schemas import SchemaSet

Obj = dict[str, Any]
ResourceKey = tuple[str, str, str]  # group, version, plural
EVENT_LOG_SIZE = 50_000
CRD_KEY = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str,
                 causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.causes = status, reason, message, causes

    def body(self) -> Obj:
        status: Obj = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                       "code": self.status, "reason": self.reason, "message": self.message}
        if self.causes:
            status["details"] = {"causes": self.causes}
        return status


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False

    @property
    def key(self) -> ResourceKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class WatchEvent:
    resource_version: int
    kind: Kind
    type: str
    object: Obj


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-based and set-based label selectors (=, ==, !=, in, notin, exists, !key)."""
    if not selector:
        return True
    for requirement in _split_selector(selector):
        req = requirement.strip()
        if " in " in req or " notin " in req:
            key, op, values = req.replace("(", " ").replace(")", " ").split(None, 2)
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            present = key in labels and labels[key] in allowed
            if (op == "in") != present:
                return False
        elif "!=" in req:
            key, value = req.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if current.strip() else parts


def field_matches(selector: str | None, obj: Obj) -> bool:
    if not selector:
        return True
    for requirement in selector.split(","):
        negate = "!=" in requirement
        path, value = requirement.replace("!=", "=").replace("==", "=").split("=", 1)
        node: Any = obj
        for part in path.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == value.strip()) == negate:
            return False
    return True


@dataclass
class Store:
    schemas: SchemaSet = field(default_factory=SchemaSet)
    objects: dict[tuple[ResourceKey, str, str], Obj] = field(default_factory=dict)
    log: deque[WatchEvent] = field(default_factory=lambda: deque(maxlen=EVENT_LOG_SIZE))
    revision: int = 1000
    compacted: int = 0  # a watch from a version before this is 410 Gone

    def compact(self) -> None:
        """Forget every event up to now, as etcd's compaction does."""
        self.log.clear()
        self.compacted = self.revision

    # -- reading ------------------------------------------------------------------------
    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        obj = self.objects.get((kind.key, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" '
                                            "not found")
        return copy.deepcopy(obj)

    def list(self, kind: Kind, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None, *, copies: bool = True) -> list[Obj]:
        """The matching objects, by namespace and name. ``copies=False`` for a caller that
        only serializes them at once (a stored object is replaced on every write, never
        changed in place); 50,000 deep copies per list are seconds."""
        found = sorted((entry for entry in self.objects.items()
                        if entry[0][0] == kind.key
                        and (namespace is None or entry[0][1] == namespace)), key=lambda e: e[0])
        return [copy.deepcopy(obj) if copies else obj for _, obj in found
                if selector_matches(label_selector, obj["metadata"].get("labels") or {})
                and field_matches(field_selector, obj)]

    def events_since(self, kind: Kind, resource_version: int) -> list[WatchEvent]:
        oldest = self.log[0].resource_version - 1 if self.log else self.compacted
        if resource_version < oldest:
            raise ApiError(410, "Expired", f"too old resource version: {resource_version} "
                                           f"({oldest})")
        # From the newest back to the first already seen: a watch that keeps up reads
        # only what is new (a scan of the whole log per wake-up made every write cost
        # the log's length, times the watches).
        found = []
        for event in reversed(self.log):
            if event.resource_version <= resource_version:
                break
            if event.kind.key == kind.key:
                found.append(event)
        found.reverse()
        return found

    # -- writing ------------------------------------------------------------------------
    def _record(self, kind: Kind, type_: str, obj: Obj) -> None:
        self.log.append(WatchEvent(self.revision, kind, type_, copy.deepcopy(obj)))

    def _bump(self, obj: Obj) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def create(self, kind: Kind, namespace: str | None, body: Obj,
               field_validation: str = "Warn") -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        ns = (namespace or meta.get("namespace") or "default") if kind.namespaced else ""
        if kind.namespaced:
            meta["namespace"] = ns
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        if kind.status_subresource:
            obj.pop("status", None)  # created without: the status is the controller's to write
        # Decoded and validated before it is stored, as the API server does: a bad body
        # is a 400 or 422 even when the name is taken.
        obj = _fold_string_data(self._validated(kind, obj, field_validation))
        key = (kind.key, ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists",
                           f'{kind.plural}.{kind.group or "core"} "{meta["name"]}" already exists')
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        self._bump(obj)
        self.objects[key] = obj
        self._record(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def replace(self, kind: Kind, namespace: str, name: str, body: Obj,
                subresource: str | None, field_validation: str = "Warn") -> Obj:
        current = self.get(kind, namespace, name)
        self._check_version(body, current)
        new = copy.deepcopy(body)
        new["metadata"] = {**current["metadata"], **{
            k: v for k, v in (new.get("metadata") or {}).items()
            if k in ("labels", "annotations", "finalizers", "ownerReferences")}}
        return self._commit(kind, current, new, subresource, field_validation)

    def patch(self, kind: Kind, namespace: str, name: str, patch: Any, content_type: str,
              subresource: str | None, field_validation: str = "Warn") -> Obj:
        key = (kind.key, namespace, name)
        if key not in self.objects:
            if content_type.startswith("application/apply-patch"):
                # server-side apply creates
                return self.create(kind, namespace, patch, field_validation)
            raise ApiError(404, "NotFound", f'{kind.plural} "{name}" not found')
        current = self.get(kind, namespace, name)
        if isinstance(patch, dict):
            self._check_version(patch, current)
        try:
            new = apply_patch(current, patch, content_type)
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
        return self._commit(kind, current, new, subresource, field_validation)

    def _commit(self, kind: Kind, current: Obj, new: Obj, subresource: str | None,
                field_validation: str = "Warn") -> Obj:
        if kind.status_subresource:
            if subresource == "status":  # only .status changes through /status
                new = {**current, "status": new.get("status")}
                if new["status"] is None:
                    del new["status"]
            else:  # and never through the main endpoint
                new = {k: v for k, v in new.items() if k != "status"}
                if "status" in current:
                    new["status"] = current["status"]
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation",
                      "deletionTimestamp"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
        new = _fold_string_data(self._validated(kind, new, field_validation, current))
        if _spec_part(new) != _spec_part(current):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return current  # no change: no new version, no event
        key = (kind.key, current["metadata"].get("namespace", ""), current["metadata"]["name"])
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._bump(new)
            del self.objects[key]
            self._record(kind, "DELETED", new)
            return copy.deepcopy(new)
        self._bump(new)
        self.objects[key] = new
        self._record(kind, "MODIFIED", new)
        return copy.deepcopy(new)

    def delete(self, kind: Kind, namespace: str, name: str) -> Obj:
        current = self.get(kind, namespace, name)
        key = (kind.key, namespace, name)
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = _now()
                self._bump(current)
                self.objects[key] = current
                self._record(kind, "MODIFIED", current)
            return copy.deepcopy(current)
        self._bump(current)
        del self.objects[key]
        self._record(kind, "DELETED", current)
        return current

    def _check_version(self, body: Obj, current: Obj) -> None:
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on "{current["metadata"]["name"]}": '
                           "the object has been modified; please apply your changes to the "
                           "latest version and try again")

    def _validated(self, kind: Kind, obj: Obj, field_validation: str,
                   stored: Obj | None = None) -> Obj:
        schema = self.schemas.get(kind.key)
        name = (obj.get("metadata") or {}).get("name", "")
        if schema is None:
            return self._validated_builtin(kind, obj, field_validation)
        unknown = schema.unknown_fields(obj)
        if unknown and field_validation == "Strict":
            raise _undecodable(kind, "strict decoding error: " + ", ".join(
                f'unknown field "{f}"' for f in unknown))
        obj, errors = schema.admit(obj, stored)
        if errors:
            raise _invalid(kind, name, errors)
        return obj

    def _validated_builtin(self, kind: Kind, obj: Obj, field_validation: str) -> Obj:
        """The Kubernetes schemas (and, for a CRD, the API server's rules for it)."""
        findings = validation.kubernetes_findings(obj)
        if kind.key == CRD_KEY:
            findings += validation.crd_findings(obj)
        undecodable = [f for f in findings if f.kind == "decode"]
        if undecodable:
            raise _undecodable(kind, "; ".join(f.message for f in undecodable))
        unknown = [f for f in findings if f.kind == "unknown"]
        if unknown and field_validation == "Strict":
            raise _undecodable(kind, "strict decoding error: " + ", ".join(
                f.message for f in unknown))
        invalid = [(f.field, f.message) for f in findings if f.kind == "invalid"]
        if invalid:
            raise _invalid(kind, (obj.get("metadata") or {}).get("name", ""), invalid)
        for finding in unknown:  # not strict: dropped, as decoding into Go types does
            _drop(obj, finding.parts)
        return obj


def _invalid(kind: Kind, name: str, errors: list[tuple[str, str]]) -> ApiError:
    """422, worded as the API server words it."""
    causes = [{"reason": "FieldValueInvalid", "field": path, "message": message}
              for path, message in errors]
    summary = ", ".join(f"{path}: {message}" for path, message in errors)
    if len(errors) > 1:
        summary = f"[{summary}]"
    return ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: {summary}', causes)


def _undecodable(kind: Kind, why: str) -> ApiError:
    return ApiError(400, "BadRequest", f'{kind.kind} in version "{kind.version}" cannot be '
                                       f"handled as a {kind.kind}: {why}")


def _drop(obj: Any, parts: tuple[Any, ...]) -> None:
    for part in parts[:-1]:
        obj = obj[part]
    obj.pop(parts[-1], None)


def _fold_string_data(obj: Obj) -> Obj:
    """A Secret's stringData is write-only: the API server folds it into data (base64)."""
    if obj.get("kind") == "Secret" and "stringData" in obj:
        data = dict(obj.get("data") or {})
        for key, value in (obj.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    return obj


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}
