"""The operator's view of the cluster: the latest body of every watched object.

Fed by the watches (watches.py); read by the reconciler as a ClusterView. Objects are
filed by the watched-kinds table (kinds.py).

It also keeps which compiled objects changed since the last view (in a way the build
cares about: the fingerprint), so a build compiles what changed without comparing the
whole view with what the compiler holds (with 21,000 objects that comparison alone took
about 90 ms per change).

It belongs to the event loop: only the loop touches its dicts. A view is safe to hand
to another thread (the compiler runs in one): its lists and dicts are new, and a body,
once stored, is never changed; an event stores a new body in its place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from .compiler import K8sObject, ObjectRef, Snapshot
from .compiler.objects import DEFAULT_NAMESPACE
from .kinds import COMPILED, KINDS, PROXY_POD, Kind
from .pusher import ProxyTarget
from .reconciler import ClusterView

# kind, namespace, name: equal to the compiler's ObjectRef of the object (a NamedTuple),
# so either finds it in a dict keyed by the other.
Key = tuple[str, str, str]


def fingerprint(kind: Kind, body: Mapping[str, Any]) -> str:
    """What matters of an object to the build: our own status writes do not."""
    meta = body.get("metadata") or {}
    relevant = {k: v for k, v in body.items() if k not in ("status", "metadata")}
    relevant["metadata"] = {k: meta.get(k) for k in ("labels", "generation", "deletionTimestamp")}
    if kind is PROXY_POD:
        relevant["status"] = body.get("status")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def key_of(kind: Kind, body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (kind.kind, meta.get("namespace") or DEFAULT_NAMESPACE, meta.get("name") or "")


class ClusterCache:
    def __init__(self, proxy_target: Callable[[Mapping[str, Any]], ProxyTarget | None]) -> None:
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {k.kind: {} for k in KINDS}
        self._fingerprints: dict[Key, str] = {}
        self._proxy_target = proxy_target
        # Compiled objects changed since the last view: the new body, None when deleted.
        self._changes: dict[Key, dict[str, Any] | None] = {}

    def put(self, kind: Kind, body: dict[str, Any], fingerprint: str) -> bool:
        """Store an object (a body of its own, never changed afterwards); True when it
        changed in a way the build cares about."""
        key = key_of(kind, body)
        self._objects[kind.kind][key] = body
        if self._fingerprints.get(key) == fingerprint:
            return False
        self._fingerprints[key] = fingerprint
        if kind.field is not None:
            self._changes[key] = body
        return True

    def holds(self, kind: Kind, body: Mapping[str, Any]) -> bool:
        """Whether this version of the object is held already (the same resourceVersion:
        the same object)."""
        key = key_of(kind, body)
        held = self._objects[kind.kind].get(key)
        version = (body.get("metadata") or {}).get("resourceVersion")
        return held is not None and bool(version) and \
            held["metadata"].get("resourceVersion") == version

    def restatused(self, kind: Kind, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` is the held object with only its status or metadata moved,
        as when a status write (ours, as a rule) comes back; if so it is held in the old
        one's place with the new metadata and status. For kinds with a status
        subresource: the same generation means the same spec, and with the same labels
        and deletionTimestamp, the same fingerprint (handlers._fingerprint) without
        copying the whole body or serialising it (11,000 such events at a first start;
        a deletion that comes after them on the watch waits for them all)."""
        key = key_of(kind, body)
        held = self._objects[kind.kind].get(key)
        meta = body.get("metadata") or {}
        if held is None or meta.get("generation") is None or any(
                meta.get(field) != held["metadata"].get(field)
                for field in ("generation", "labels", "deletionTimestamp")):
            return False
        # Not deep copies: each event's body is parsed afresh and never changed.
        fresh = {**held, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
        if "status" in body:
            fresh["status"] = body["status"]
        else:
            fresh.pop("status", None)
        self._objects[kind.kind][key] = fresh
        return True

    def remove(self, kind: Kind, body: Mapping[str, Any]) -> bool:
        """Forget an object; True when it was held."""
        return self.remove_key(kind, key_of(kind, body))

    def remove_key(self, kind: Kind, key: Key) -> bool:
        self._fingerprints.pop(key, None)
        if self._objects[kind.kind].pop(key, None) is None:
            return False
        if kind.field is not None:
            self._changes[key] = None
        return True

    def keys(self, kind: Kind) -> list[Key]:
        """The keys of the objects of a kind held now."""
        return list(self._objects[kind.kind])

    def size(self) -> int:
        return sum(len(objects) for objects in self._objects.values())

    def view(self) -> ClusterView:
        """The objects now, and those changed since the last view."""
        snapshot = Snapshot(**{str(k.field): list(self._objects[k.kind].values())
                               for k in COMPILED})
        targets = [t for body in self._objects[PROXY_POD.kind].values()
                   if (t := self._proxy_target(body)) is not None]
        changes: dict[ObjectRef, K8sObject | None] = {
            ObjectRef(*key): body for key, body in self._changes.items()}
        self._changes = {}
        bodies: dict[ObjectRef, K8sObject] = {
            **self._objects["WsRoute"], **self._objects["WsConsumer"]}  # type: ignore[dict-item]
        return ClusterView(snapshot, sorted(targets, key=lambda t: t.name), changes, bodies)
