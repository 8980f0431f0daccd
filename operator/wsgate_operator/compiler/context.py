"""The build context: what the processors look objects up in, and where they report.

One context per build holds the indexes of the objects (Secrets by name, Services,
EndpointSlices by the Service they belong to, the parsed consumers for label
selectors) and collects the problems of each object, as Contour's builder does with
its status accessor: a processor says ``ctx.problem(ref, field, reason, message)``
about the object it is compiling and never passes a list around.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ..resources import LabelSelector, WsConsumerSpec
from .objects import K8sObject, ObjectRef, Problem

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

NamespacedName = tuple[str, str]


class BuildContext:
    def __init__(self) -> None:
        self.problems: dict[ObjectRef, list[Problem]] = {}
        self.secrets: dict[NamespacedName, K8sObject] = {}
        self.services: dict[NamespacedName, K8sObject] = {}
        self.slices: dict[NamespacedName, list[K8sObject]] = defaultdict(list)
        # Consumers whose spec parsed, by namespace: what label selectors choose from.
        self.consumers: dict[str, dict[ObjectRef, tuple[K8sObject, WsConsumerSpec]]] = \
            defaultdict(dict)

    # -- reporting -------------------------------------------------------------------
    def problem(self, ref: ObjectRef, field: str, reason: str, message: str, *,
                invalid: bool = False) -> None:
        """Report something wrong with the object ``ref`` (``invalid``: the object itself
        is malformed and left out, not merely referring to what does not exist yet)."""
        self.problems.setdefault(ref, []).append(Problem(ref, field, reason, message, invalid))

    def problems_of(self, ref: ObjectRef) -> list[Problem]:
        return self.problems.get(ref, [])

    # -- indexes ---------------------------------------------------------------------
    def index(self, kind: str, objects: Iterable[K8sObject]) -> None:
        """File well-formed objects of a kind the processors look up."""
        for obj in objects:
            ref = ObjectRef.of(obj)
            if kind == "Secret":
                self.secrets[(ref.namespace, ref.name)] = obj
            elif kind == "Service":
                self.services[(ref.namespace, ref.name)] = obj
            elif kind == "EndpointSlice":
                service = ((obj.get("metadata") or {}).get("labels") or {}).get(
                    SERVICE_NAME_LABEL)
                if service:
                    self.slices[(ref.namespace, service)].append(obj)

    def add_consumer(self, ref: ObjectRef, obj: K8sObject, spec: WsConsumerSpec) -> None:
        self.consumers[ref.namespace][ref] = (obj, spec)

    # -- lookups ---------------------------------------------------------------------
    def secret(self, namespace: str, name: str) -> K8sObject | None:
        return self.secrets.get((namespace, name))

    def service(self, namespace: str, name: str) -> K8sObject | None:
        return self.services.get((namespace, name))

    def slices_of(self, namespace: str, service: str) -> list[K8sObject]:
        return self.slices.get((namespace, service), [])

    def consumers_matching(self, namespace: str, selector: LabelSelector) -> list[str]:
        """Names of the namespace's consumers (those whose spec is valid) the selector
        chooses."""
        return [ref.name for ref, (obj, _spec) in self.consumers.get(namespace, {}).items()
                if selector.matches((obj.get("metadata") or {}).get("labels") or {})]
