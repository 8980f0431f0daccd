"""What the compiler reads and what it says about it: objects, references, problems."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..kinds import BY_KIND, COMPILED

DEFAULT_NAMESPACE = "default"

K8sObject = Mapping[str, Any]

# kind -> the Snapshot list that holds it
SNAPSHOT_KINDS: dict[str, str] = {k.kind: k.field for k in COMPILED if k.field}


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: K8sObject) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj.get("kind", "?")),
            namespace=str(meta.get("namespace") or DEFAULT_NAMESPACE),
            name=str(meta.get("name", "")),
        )


@dataclass(frozen=True)
class Problem:
    """Something wrong with one object, phrased so a person can act on it.

    ``reason`` is a CamelCase word (it becomes a condition reason); ``invalid``
    marks problems where the object itself is malformed and was left out, as
    opposed to references that do not resolve (yet).
    """

    ref: ObjectRef
    field: str
    reason: str
    message: str
    invalid: bool = False

    def __str__(self) -> str:
        where = f"{self.ref}: {self.field}" if self.field else str(self.ref)
        return f"{where}: {self.message}"


@dataclass
class Snapshot:
    """The objects the compiler reads, as the Kubernetes API returns them: one list per
    compiled kind of the watched-kinds table (kinds.py)."""

    routes: list[K8sObject] = field(default_factory=list)
    consumers: list[K8sObject] = field(default_factory=list)
    secrets: list[K8sObject] = field(default_factory=list)
    services: list[K8sObject] = field(default_factory=list)
    endpoint_slices: list[K8sObject] = field(default_factory=list)

    def add(self, obj: K8sObject) -> bool:
        """File an object under its kind; False for kinds the compiler does not read."""
        kind = BY_KIND.get(str(obj.get("kind"))) if isinstance(obj, Mapping) else None
        if kind is None or kind.field is None:
            return False
        getattr(self, kind.field).append(obj)
        return True

    @classmethod
    def of(cls, objects: Iterable[K8sObject]) -> Snapshot:
        snapshot = cls()
        for obj in objects:
            snapshot.add(obj)
        return snapshot
