"""The build context: what the processors look objects up in, and where they report.

It holds the indexes of the objects (Secrets by name, Services, EndpointSlices by
the Service they belong to, the parsed consumers for label selectors) and collects
the problems of each object, as Contour's builder does with its status accessor: a
processor says ``ctx.problem(ref, field, reason, message)`` about the object it is
compiling and never passes a list around.

It lives as long as the compiler: an object is compiled inside ``ctx.compiling(ref)``,
which forgets the object's earlier problems and records what the processor looks up
(a Secret, a Service, the EndpointSlices of a Service, the consumers of a namespace).
Those records are how an update finds what to compile again: ``dependents`` of a
changed Secret are the consumers and routes that read it, whether it existed then or not.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

from ..resources import LabelSelector, WsConsumerSpec
from .objects import K8sObject, ObjectRef, Problem

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

NamespacedName = tuple[str, str]
# What a compile looked up: ("Secret", ns, name), ("Service", ns, name),
# ("Slices", ns, service) or ("Consumers", ns, "").
Dependency = tuple[str, str, str]


class BuildContext:
    def __init__(self) -> None:
        # Problems per object and per stage: an object's own compile, and the settling
        # of what it shares with others (a consumer's duplicate credentials).
        self.problems: dict[ObjectRef, list[Problem]] = {}
        self.settled: dict[ObjectRef, list[Problem]] = {}
        self._into = self.problems
        self.secrets: dict[NamespacedName, K8sObject] = {}
        self.services: dict[NamespacedName, K8sObject] = {}
        self.slices: dict[NamespacedName, dict[ObjectRef, K8sObject]] = defaultdict(dict)
        self._slice_service: dict[ObjectRef, NamespacedName] = {}
        # Consumers whose spec parsed, by namespace: what label selectors choose from.
        self.consumers: dict[str, dict[ObjectRef, tuple[K8sObject, WsConsumerSpec]]] = \
            defaultdict(dict)
        self._reading: ObjectRef | None = None
        self._reads: dict[ObjectRef, set[Dependency]] = {}
        self._dependents: dict[Dependency, set[ObjectRef]] = defaultdict(set)

    # -- compiling -------------------------------------------------------------------
    @contextlib.contextmanager
    def compiling(self, ref: ObjectRef) -> Iterator[None]:
        """Compile (again) one object: its earlier problems and reads are forgotten, and
        what it reports and looks up from here on is its own."""
        self.problems.pop(ref, None)
        self._forget_reads(ref)
        self._reading, self._into = ref, self.problems
        try:
            yield
        finally:
            self._reading = None

    @contextlib.contextmanager
    def settling(self, ref: ObjectRef) -> Iterator[None]:
        """Settle (again) what one object shares with others; its earlier problems of
        that kind are forgotten."""
        self.settled.pop(ref, None)
        self._into = self.settled
        try:
            yield
        finally:
            self._into = self.problems

    def forget(self, ref: ObjectRef) -> None:
        """An object that is gone: its problems and reads go with it."""
        self.problems.pop(ref, None)
        self.settled.pop(ref, None)
        self._forget_reads(ref)

    def _forget_reads(self, ref: ObjectRef) -> None:
        for dependency in self._reads.pop(ref, ()):
            readers = self._dependents.get(dependency)
            if readers is not None:
                readers.discard(ref)
                if not readers:
                    del self._dependents[dependency]

    def _read(self, dependency: Dependency) -> None:
        if self._reading is not None:
            self._reads.setdefault(self._reading, set()).add(dependency)
            self._dependents[dependency].add(self._reading)

    def dependents(self, dependency: Dependency) -> set[ObjectRef]:
        """The objects whose last compile looked this up."""
        return set(self._dependents.get(dependency, ()))

    # -- reporting -------------------------------------------------------------------
    def problem(self, ref: ObjectRef, field: str, reason: str, message: str, *,
                invalid: bool = False) -> None:
        """Report something wrong with the object being compiled (``invalid``: the
        object itself is malformed and left out, not merely referring to what does not
        exist yet). Filed under the object being compiled; ``ref`` names it for people."""
        key = self._reading or ref
        self._into.setdefault(key, []).append(Problem(ref, field, reason, message, invalid))

    def problems_of(self, ref: ObjectRef) -> list[Problem]:
        return [*self.problems.get(ref, ()), *self.settled.get(ref, ())]

    # -- indexes ---------------------------------------------------------------------
    def file(self, ref: ObjectRef, obj: K8sObject | None) -> None:
        """File (or, with None, remove) a well-formed Secret, Service or EndpointSlice."""
        key = (ref.namespace, ref.name)
        if ref.kind == "Secret":
            _put(self.secrets, key, obj)
        elif ref.kind == "Service":
            _put(self.services, key, obj)
        elif ref.kind == "EndpointSlice":
            before = self._slice_service.pop(ref, None)
            if before is not None:
                slices = self.slices[before]
                slices.pop(ref, None)
                if not slices:
                    del self.slices[before]
            if obj is not None and (service := slice_service(obj)):
                self._slice_service[ref] = (ref.namespace, service)
                self.slices[(ref.namespace, service)][ref] = obj

    def service_of_slice(self, ref: ObjectRef) -> NamespacedName | None:
        """The Service a filed EndpointSlice belongs to."""
        return self._slice_service.get(ref)

    def add_consumer(self, ref: ObjectRef, obj: K8sObject, spec: WsConsumerSpec) -> None:
        self.consumers[ref.namespace][ref] = (obj, spec)

    def remove_consumer(self, ref: ObjectRef) -> None:
        consumers = self.consumers.get(ref.namespace)
        if consumers is not None and consumers.pop(ref, None) is not None and not consumers:
            del self.consumers[ref.namespace]

    # -- lookups (recorded as what the object being compiled read) ---------------------
    def secret(self, namespace: str, name: str) -> K8sObject | None:
        self._read(("Secret", namespace, name))
        return self.secrets.get((namespace, name))

    def service(self, namespace: str, name: str) -> K8sObject | None:
        self._read(("Service", namespace, name))
        return self.services.get((namespace, name))

    def slices_of(self, namespace: str, service: str) -> list[K8sObject]:
        self._read(("Slices", namespace, service))
        return [self.slices[(namespace, service)][ref]
                for ref in sorted(self.slices.get((namespace, service), ()))]

    def consumers_matching(self, namespace: str, selector: LabelSelector) -> list[str]:
        """Names of the namespace's consumers (those whose spec is valid) the selector
        chooses."""
        self._read(("Consumers", namespace, ""))
        return [ref.name for ref, (obj, _spec) in self.consumers.get(namespace, {}).items()
                if selector.matches(labels_of(obj))]


def slice_service(obj: K8sObject) -> str | None:
    """The Service an EndpointSlice belongs to (its kubernetes.io/service-name label)."""
    service = labels_of(obj).get(SERVICE_NAME_LABEL)
    return service if isinstance(service, str) and service else None


def labels_of(obj: K8sObject) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _put(index: dict[NamespacedName, K8sObject], key: NamespacedName,
         obj: K8sObject | None) -> None:
    if obj is None:
        index.pop(key, None)
    else:
        index[key] = obj
