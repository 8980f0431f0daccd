"""The operator's view of the cluster: the latest body of every watched object.

Fed by the kopf handlers; read by the reconciler as a ClusterView. Objects are filed
by the watched-kinds table (kinds.py). It knows when the initial lists have arrived:
``expect`` takes the objects listed at start, and ``complete`` is set once each of
them has been delivered (or deleted).

It belongs to the event loop: the handlers that feed it are coroutines, and only the
loop touches its dicts and its Event. A view is safe to hand to another thread (the
compiler runs in one): its lists are new, and a body, once stored, is never changed;
an event stores a new body in its place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from .compiler import Snapshot
from .kinds import COMPILED, KINDS, PROXY_POD, Kind
from .pusher import ProxyTarget
from .reconciler import ClusterView

Key = tuple[str, str, str]  # kind, namespace, name


def key_of(kind: Kind, body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (kind.kind, meta.get("namespace") or "", meta.get("name") or "")


class ClusterCache:
    def __init__(self, proxy_target: Callable[[Mapping[str, Any]], ProxyTarget | None]) -> None:
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {k.kind: {} for k in KINDS}
        self._fingerprints: dict[Key, str] = {}
        self._proxy_target = proxy_target
        self._expected: set[Key] | None = None  # None: the start-up lists are not in yet
        self._early: set[Key] = set()  # delivered before the lists were known
        self.complete = asyncio.Event()

    def put(self, kind: Kind, body: dict[str, Any], fingerprint: str) -> bool:
        """Store an object (a body of its own, never changed afterwards); True when it
        changed in a way the build cares about."""
        key = key_of(kind, body)
        self._objects[kind.kind][key] = body
        self._arrived(key)
        if self._fingerprints.get(key) == fingerprint:
            return False
        self._fingerprints[key] = fingerprint
        return True

    def remove(self, kind: Kind, body: Mapping[str, Any]) -> bool:
        key = key_of(kind, body)
        self._arrived(key)
        self._fingerprints.pop(key, None)
        return self._objects[kind.kind].pop(key, None) is not None

    def expect(self, listed: set[Key]) -> None:
        self._expected = listed - self._early
        self._early.clear()
        self._check_complete()

    def _arrived(self, key: Key) -> None:
        if self._expected is None:
            self._early.add(key)
        else:
            self._expected.discard(key)
            self._check_complete()

    def _check_complete(self) -> None:
        if self._expected is not None and not self._expected and not self.complete.is_set():
            self.complete.set()

    def missing(self) -> int:
        return len(self._expected or ())

    def size(self) -> int:
        return sum(len(objects) for objects in self._objects.values())

    def view(self) -> ClusterView:
        snapshot = Snapshot(**{str(k.field): list(self._objects[k.kind].values())
                               for k in COMPILED})
        targets = [t for body in self._objects[PROXY_POD.kind].values()
                   if (t := self._proxy_target(body)) is not None]
        return ClusterView(snapshot, sorted(targets, key=lambda t: t.name))
