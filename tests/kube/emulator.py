"""A Kubernetes API emulator for the operator tier: kmock, extended with API-server
semantics.

kmock (by kopf's author) provides the scaffold: request parsing, resource discovery,
error shapes and the bundled catalogue of built-in resources. Its stock object
handling lacks what kopf, kubectl and the official client rely on (see
../shared/notes/testing-against-a-kubernetes-api.md); here resource requests go to a
store with those semantics (tests/kube/store.py), without kmock's reaction scan (which
re-reads the whole request history on every request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering  # the scaffold's parsed request (pinned kmock)

from tests.kube.store import (
    CRD_KEY,
    ApiError,
    Kind,
    Obj,
    Store,
    field_matches,
    selector_matches,
)

ROOT = Path(__file__).resolve().parents[2]
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")


@dataclasses.dataclass(frozen=True, order=True)
class Access:
    """A request as RBAC authorizes it: API group, resource (/subresource), verb and
    namespace ("" for cluster-wide requests)."""

    group: str
    resource: str
    verb: str
    namespace: str

    @classmethod
    def of(cls, method: str, path: str, query: Mapping[str, str]) -> Access | None:
        """None for non-resource requests (discovery, /version, /openapi)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        elif len(rest) == 2 and rest[0] == "namespaces":  # a namespace itself
            rest = ["namespaces", rest[1]]
        if not rest:
            return None
        resource = rest[0] + (f"/{rest[2]}" if len(rest) >= 3 else "")
        named = len(rest) >= 2
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if named else "deletecollection"}.get(method.upper())
        if verb is None:
            verb = "watch" if query.get("watch") in ("true", "1") else (
                "get" if named else "list")
        return cls(group, resource, verb, namespace)


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesScaffold):
    store: Store = attrs.field(factory=Store)
    kinds: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict)
    printer_columns: dict[tuple[str, str, str], list[dict[str, Any]]] = attrs.field(factory=dict)
    _written: asyncio.Event = attrs.field(factory=asyncio.Event)
    watches: int = 0
    _ended: int = 0  # bumped to end every open watch
    # Every request served over HTTP, as RBAC sees it (tests/operator/test_rbac.py).
    requests: deque[Access] = attrs.field(factory=lambda: deque(maxlen=100_000))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for resource in list(self.resources):
            info = self.resources[resource]
            if resource.plural and info.kind:
                self.kinds[(resource.group, resource.version, resource.plural)] = Kind(
                    resource.group, resource.version, resource.plural, info.kind,
                    bool(info.namespaced), "status" in set(info.subresources))

    # -- set-up ---------------------------------------------------------------------------
    def add_crds(self, directory: Path = ROOT / "crds") -> None:
        """Create every CRD in the directory's files, through the same admission as a
        POST (strict field validation, as `kubectl apply` asks): an invalid one raises."""
        crd_kind = self.kinds[CRD_KEY]
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if crd:
                    self._register_crd(self.store.create(crd_kind, "", crd, "Strict"))

    def _register_crd(self, crd: Obj) -> None:
        """Serve the resource a CRD defines (after the store admitted the CRD)."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            key = (spec["group"], version["name"], names["plural"])
            info = self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"]
            info.kind, info.singular = names["kind"], names.get("singular")
            info.namespaced = spec["scope"] == "Namespaced"
            info.verbs.update({"get", "list", "watch", "create", "update", "patch", "delete",
                               "deletecollection"})
            info.shortnames.update(names.get("shortNames") or [])
            info.categories.update(names.get("categories") or [])
            has_status = "status" in (version.get("subresources") or {})
            if has_status:
                info.subresources.add("status")
            self.kinds[key] = Kind(*key, names["kind"], info.namespaced, has_status)
            self.printer_columns[key] = version.get("additionalPrinterColumns") or []
        self.store.schemas.add_crd(crd)

    def kind(self, api_version: str, kind: str) -> Kind:
        group, _, version = api_version.rpartition("/")
        return next(k for k in self.kinds.values()
                    if (k.group, k.version, k.kind) == (group, version, kind))

    # -- direct access for tests (the same rules as over HTTP) ----------------------------
    def apply(self, obj: Obj) -> Obj:
        kind = self.kind(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        namespace = meta.get("namespace", "default") if kind.namespaced else ""
        try:
            self.store.get(kind, namespace, meta["name"])
        except ApiError:
            result = self.store.create(kind, namespace, obj, "Strict")
        else:
            result = self.store.replace(kind, namespace, meta["name"], obj, None, "Strict")
        if "status" in obj and kind.status_subresource:
            # As a controller (the kubelet, for a Pod) would: through /status.
            result = self.store.replace(kind, namespace, meta["name"],
                                        {**result, "status": obj["status"]}, "status")
        self._notify()
        return result

    def delete(self, api_version: str, kind_name: str, name: str,
               namespace: str = "default") -> None:
        kind = self.kind(api_version, kind_name)
        self.store.delete(kind, namespace if kind.namespaced else "", name)
        self._notify()

    def get(self, api_version: str, kind_name: str, name: str,
            namespace: str = "default") -> Obj:
        kind = self.kind(api_version, kind_name)
        return self.store.get(kind, namespace if kind.namespaced else "", name)

    def objects(self, api_version: str, kind_name: str,
                namespace: str | None = None) -> list[Obj]:
        return self.store.list(self.kind(api_version, kind_name), namespace)

    def _notify(self) -> None:
        self._written.set()
        self._written = asyncio.Event()

    def restart(self, *, compact: bool = False) -> None:
        """End every open watch, as an API server's restart does; with ``compact`` the
        event log is forgotten too, so a watch from an earlier version gets 410 Gone."""
        if compact:
            self.store.compact()
        self._ended += 1
        self._notify()

    # -- HTTP --------------------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        access = Access.of(raw_request.method, raw_request.path, raw_request.query)
        if access is not None:
            self.requests.append(access)
        # kmock's path parser fails on the namespaces themselves: serve them before it.
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match:
            return await self._serve_namespaces(raw_request, match.group(1))
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            resource = request.resource
            key = (resource.group, resource.version, resource.plural) if resource else None
            if key in self.kinds and request.resource.plural:
                return await self._serve_resource(request, self.kinds[key])
        except ApiError as exc:
            return aiohttp.web.json_response(exc.body(), status=exc.status)
        return await super()._handle(request)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        listing = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            listing["groupVersion"] = request.resource.version  # "v1", not "/v1"
        for entry in listing["resources"]:
            if "/" in entry["name"]:  # subresources have no short names or categories
                entry["shortNames"], entry["categories"] = [], []
                entry["verbs"] = ["get", "patch", "update"]
        return listing

    async def _serve_namespaces(self, request: aiohttp.web.BaseRequest,
                                name: str | None) -> aiohttp.web.StreamResponse:
        names = sorted({"default", "kube-system"} | {
            ns for (_, ns, _) in self.store.objects if ns})

        def namespace(n: str) -> Obj:
            return {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "uid": f"ns-{n}", "resourceVersion": "1"},
                    "status": {"phase": "Active"}}

        if request.query.get("watch") == "true":
            return await self._stream(request, [namespace(n) for n in names])
        if name is None:
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": [namespace(n) for n in names]})
        return aiohttp.web.json_response(namespace(name))

    async def _serve_resource(self, request: rendering.Request,
                              kind: Kind) -> aiohttp.web.StreamResponse:
        method = request.method.value.upper() if request.method else "GET"
        params = request.params
        namespace = request.namespace if kind.namespaced else ""
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, kind)
        if method == "GET" and request.name is None:
            items = self.store.list(kind, namespace or None, params.get("labelSelector"),
                                    params.get("fieldSelector"), copies=False)
            if "as=Table" in request.headers.get("Accept", ""):
                return aiohttp.web.json_response(self._table(kind, items))
            return aiohttp.web.json_response({
                "apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.store.revision)}, "items": items})
        if method == "GET":
            obj = self.store.get(kind, namespace or "", request.name)
            if "as=Table" in request.headers.get("Accept", ""):
                return aiohttp.web.json_response(self._table(kind, [obj]))
            return aiohttp.web.json_response(obj)
        body = self._body(request)
        # What the request asks of unknown fields; the API server's default is Warn.
        strictness = params.get("fieldValidation") or "Warn"
        if method == "POST":
            result, status = self.store.create(kind, namespace, body, strictness), 201
        elif method == "PUT":
            result, status = self.store.replace(kind, namespace or "", request.name, body,
                                                request.subresource, strictness), 200
        elif method == "PATCH":
            content_type = request.headers.get("Content-Type", "application/merge-patch+json")
            result, status = self.store.patch(kind, namespace or "", request.name, body,
                                              content_type, request.subresource,
                                              strictness), 200
        elif method == "DELETE" and request.name is not None:
            result, status = self.store.delete(kind, namespace or "", request.name), 200
        elif method == "DELETE":
            for obj in self.store.list(kind, namespace or None, params.get("labelSelector"),
                                       params.get("fieldSelector")):
                meta = obj["metadata"]
                self.store.delete(kind, meta.get("namespace", ""), meta["name"])
            result, status = {"apiVersion": "v1", "kind": "Status", "status": "Success"}, 200
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        if kind.key == CRD_KEY and method in ("POST", "PUT", "PATCH"):
            self._register_crd(result)  # admitted: its resource is served from now on
        self._notify()
        return aiohttp.web.json_response(result, status=status)

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        if request.data is not None:
            return request.data
        text = request.text or (request.body.decode() if request.body else "")
        try:
            return yaml.safe_load(text) if text else {}
        except yaml.YAMLError:
            raise ApiError(400, "BadRequest", "the request body is neither JSON nor YAML") \
                from None

    async def _watch(self, request: rendering.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        params = request.params
        namespace = request.namespace if kind.namespaced else None
        labels, fields = params.get("labelSelector"), params.get("fieldSelector")
        raw_version = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true"
        timeout = float(params.get("timeoutSeconds") or 1800)

        def wanted(obj: Obj) -> bool:
            meta = obj.get("metadata") or {}
            return ((namespace is None or meta.get("namespace") == namespace)
                    and (request.name is None or meta.get("name") == request.name)
                    and selector_matches(labels, meta.get("labels") or {})
                    and field_matches(fields, obj))

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        self.watches += 1
        ended = self._ended
        try:
            if raw_version in ("", "0") or initial:
                since = self.store.revision
                for obj in self.store.list(kind, namespace, copies=False):
                    if wanted(obj):
                        await _send(response, {"type": "ADDED", "object": obj})
                if initial:
                    await _send(response, {"type": "BOOKMARK", "object": {
                        "kind": kind.kind, "apiVersion": kind.api_version, "metadata": {
                            "resourceVersion": str(since),
                            "annotations": {"k8s.io/initial-events-end": "true"}}}})
            else:
                since = int(raw_version)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    head = self.store.revision
                    events = self.store.events_since(kind, since)
                except ApiError as exc:
                    await _send(response, {"type": "ERROR", "object": exc.body()})
                    break
                for event in events:
                    if wanted(event.object):
                        await _send(response, {"type": event.type, "object": event.object})
                # Everything up to the head was read, of other kinds too: the next read
                # starts there, not at this kind's last event (a kind nobody writes
                # would read the whole log again on every wake-up).
                since = max(since, head)
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or self._ended != ended:
                    break
                written = self._written
                try:
                    async with asyncio.timeout(remaining):
                        await written.wait()
                except TimeoutError:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watches -= 1
        return response

    async def _stream(self, request: aiohttp.web.BaseRequest,
                      objects: Iterable[Obj]) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for obj in objects:
            await _send(response, {"type": "ADDED", "object": obj})
        await asyncio.sleep(float(request.query.get("timeoutSeconds") or 60))
        return response

    def _table(self, kind: Kind, items: list[Obj]) -> Obj:
        columns = self.printer_columns.get((kind.group, kind.version, kind.plural)) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        definitions = [{"name": "Name", "type": "string", "format": "name"}] + [
            {"name": c["name"], "type": c["type"], "format": c.get("format", "")}
            for c in columns]
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            cells += [_cell(column["type"], jsonpath(obj, column["jsonPath"]))
                      for column in columns]
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                                                    "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": obj["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.store.revision)},
                "columnDefinitions": definitions, "rows": rows}


async def create_from_files(api: ApiServer, url: str, *files: Path) -> list[Obj]:
    """Create every object in these YAML files over HTTP, as `kubectl create -f` does
    (JSON, strict field validation); raise ApiError with the API's answer on refusal."""
    created = []
    async with aiohttp.ClientSession(url) as http:
        for path in files:
            for obj in (d for d in yaml.safe_load_all(path.read_text()) if d):
                kind = api.kind(obj["apiVersion"], obj["kind"])
                prefix = f"/apis/{kind.group}" if kind.group else "/api"
                namespace = (obj.get("metadata") or {}).get("namespace") or "default"
                where = f"/namespaces/{namespace}" if kind.namespaced else ""
                async with http.post(f"{prefix}/{kind.version}{where}/{kind.plural}",
                                     params={"fieldValidation": "Strict"}, json=obj) as answer:
                    body = await answer.json()
                    if answer.status != 201:
                        raise ApiError(answer.status, body.get("reason", ""),
                                       f"{path.name}: {body.get('message')}",
                                       (body.get("details") or {}).get("causes"))
                    created.append(body)
    return created


def _cell(column_type: str, values: list[Any]) -> Any:
    """A printer column's cell as the API server computes it: the first value the
    JSONPath finds (none: null), a list or map as JSON, a scalar as text."""
    if not values or values[0] is None:
        return None
    value = values[0]
    if column_type == "string":
        if isinstance(value, (list, dict)):
            return json.dumps(value, separators=(",", ":"))
        return str(value).lower() if isinstance(value, bool) else str(value)
    if column_type == "date":
        return _age(value) if isinstance(value, str) else None
    if column_type == "integer" and isinstance(value, (int, float)):
        return int(value)
    if column_type == "number" and isinstance(value, (int, float)):
        return float(value)
    if column_type == "boolean" and isinstance(value, bool):
        return value
    return None


async def _send(response: aiohttp.web.StreamResponse, event: Obj) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _age(timestamp: str) -> str:
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[\*\]|\[\?\(@\.([A-Za-z0-9_.-]+)==\"([^\"]*)\"\)\]")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The few JSONPath forms printer columns use: .a.b, [*], [?(@.k=="v")]."""
    values = [obj]
    for match in _STEP.finditer(path):
        field_name, filter_key, filter_value = match.groups()
        following = []
        for value in values:
            if field_name is not None:
                if isinstance(value, dict) and field_name in value:
                    following.append(value[field_name])
            elif filter_key is None:
                following.extend(value if isinstance(value, list) else [])
            else:
                following.extend(v for v in (value if isinstance(value, list) else [])
                                 if isinstance(v, dict)
                                 and str(v.get(filter_key)) == filter_value)
        values = following
    return values
