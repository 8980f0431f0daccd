"""Status of every WsRoute and WsConsumer, computed from one build (pure).

Conditions follow Kubernetes conventions: a condition keeps its lastTransitionTime
while its status is unchanged, so an unchanged object computes to an identical
status and is not written again. A transition a person should see also becomes an
Event. The statuses are models (WsRouteStatus, WsConsumerStatus), like the specs:
crds.py puts their schemas into the CRDs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .compiler import Compiled, K8sObject, ObjectRef, Problem

# A status as the API carries it (camelCase keys): what is compared and written.
Status = dict[str, Any]


def _required(*names: str) -> Callable[[dict[str, Any]], None]:
    """The fields a schema requires of whoever writes the status (only the operator does:
    the statuses' own fields are all optional to the API server)."""
    def adjust(schema: dict[str, Any]) -> None:
        schema.pop("required", None)
        if names:
            schema["required"] = list(names)
    return adjust


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True, use_attribute_docstrings=True,
                              json_schema_extra=_required())

    def wire(self) -> Status:
        return self.model_dump(by_alias=True)


Int64 = Annotated[int, Field(json_schema_extra={"format": "int64"})]
_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class Condition(_Status):
    """A condition of the object, as Kubernetes conditions go."""

    model_config = ConfigDict(json_schema_extra=_required(
        "type", "status", "lastTransitionTime", "reason", "message"))

    type: str
    """The aspect the condition is about."""
    status: Literal["True", "False", "Unknown"]
    """Whether it holds."""
    observed_generation: Annotated[Int64, Field(ge=0)]
    """The generation the condition was set for."""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    """When the status last changed."""
    reason: str
    """A CamelCase word for why."""
    message: str
    """What is the matter, for a person."""


class ProxyCount(_Status):
    """The proxy pods the operator pushes to (those running, with an IP), and how many
    of them run this generation."""

    synced: int
    """Running proxy pods whose config includes this generation of the route."""
    total: int
    """Running proxy pods (phase Running, with an IP) that match the operator's proxy
    selector."""


class WsRouteStatus(_Status):
    """What the operator made of the route."""

    observed_generation: Int64
    """The generation this status was written for."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=_LIST_MAP)]
    """Accepted: the spec is valid and compiled. ResolvedRefs: the backend Service and port
    (and the TLS and CA Secrets: the backend's, the External auth server's, the identity
    providers') were found. Programmed: every running proxy pod runs a config that
    includes this generation."""
    endpoints: int
    """Ready endpoints of the backend."""
    proxies: ProxyCount


class WsConsumerStatus(_Status):
    """What the operator made of the consumer."""

    observed_generation: Int64
    """The generation this status was written for."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=_LIST_MAP)]
    """Ready: the consumer can authenticate. ResolvedRefs: every credential's Secret was
    found, labelled and complete."""
    username: str
    """The name upstreams see."""
    credentials: int
    """Usable credentials."""


@dataclass(frozen=True)
class ProxySync:
    """Of the proxy pods the operator pushes to (phase Running, with an IP: not
    necessarily ready), how many run a config including a route's current generation."""

    synced: int
    total: int


@dataclass(frozen=True)
class Event:
    ref: ObjectRef
    type: str  # Normal or Warning
    reason: str
    message: str


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int,
               previous: Mapping[str, Any] | None, now: str) -> Condition:
    status = "True" if ok else "False"
    unchanged = previous is not None and previous.get("status") == status
    return Condition(
        type=kind,
        status=status,
        observed_generation=generation,
        last_transition_time=previous["lastTransitionTime"] if unchanged else now,
        reason=reason,
        message=message,
    )


def _previous(obj: K8sObject) -> dict[str, dict[str, Any]]:
    conditions = ((obj.get("status") or {}).get("conditions")) or []
    return {c["type"]: c for c in conditions if isinstance(c, dict) and "type" in c}


def _describe(problems: list[Problem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)


class _Conditions:
    """The conditions of one object: its problems split, and the common ResolvedRefs."""

    def __init__(self, obj: K8sObject, compiled: Compiled, now: str) -> None:
        self.ref = ObjectRef.of(obj)
        self.generation = int((obj.get("metadata") or {}).get("generation") or 0)
        self._previous = _previous(obj)
        self._now = now
        problems = compiled.problems_of(self.ref)
        self.invalid = [p for p in problems if p.invalid]
        self.unresolved = [p for p in problems if not p.invalid]

    def __call__(self, kind: str, ok: bool, reason: str, message: str) -> Condition:
        return _condition(kind, ok, reason, message, self.generation,
                          self._previous.get(kind), self._now)

    def resolved_refs(self, ok_message: str) -> Condition:
        if self.unresolved:
            return self("ResolvedRefs", False, self.unresolved[0].reason,
                        _describe(self.unresolved))
        if self.invalid:
            return self("ResolvedRefs", False, "InvalidSpec", "the spec is not valid")
        return self("ResolvedRefs", True, "ResolvedRefs", ok_message)


def route_status(obj: K8sObject, compiled: Compiled, sync: ProxySync, now: str) -> Status:
    cond = _Conditions(obj, compiled, now)
    endpoints = compiled.route_endpoints.get(cond.ref, 0)
    if cond.invalid:
        accepted = cond("Accepted", False, "InvalidSpec", _describe(cond.invalid))
    else:
        # No config version in the message: it changes with every object in the cluster,
        # and would rewrite every route's status on every change.
        accepted = cond("Accepted", True, "Accepted", "the spec is valid and compiled")
    resolved = cond.resolved_refs(f"{endpoints} ready endpoint{'s' if endpoints != 1 else ''}")
    if cond.invalid:
        programmed = cond("Programmed", False, "InvalidSpec", "not compiled: the spec is not valid")
    elif sync.total == 0:
        programmed = cond("Programmed", False, "NoProxies",
                          "no running proxy pod with an IP matches the operator's proxy "
                          "selector")
    elif sync.synced < sync.total:
        programmed = cond("Programmed", False, "Pending",
                          f"{sync.synced} of {sync.total} running proxy pods run this "
                          "generation")
    else:
        programmed = cond("Programmed", True, "Programmed",
                          "the running proxy pod runs this generation" if sync.total == 1 else
                          f"all {sync.total} running proxy pods run this generation")
    return WsRouteStatus(
        observed_generation=cond.generation,
        conditions=[accepted, resolved, programmed],
        endpoints=endpoints,
        proxies=ProxyCount(synced=sync.synced, total=sync.total),
    ).wire()


def consumer_status(obj: K8sObject, compiled: Compiled, now: str) -> Status:
    cond = _Conditions(obj, compiled, now)
    compiled_consumer = compiled.consumer(cond.ref)
    count = 0
    if compiled_consumer is not None:
        c = compiled_consumer
        count = len(c.keys) + len(c.basic) + len(c.jwt)
    spec = obj.get("spec") or {}
    resolved = cond.resolved_refs("every credential's Secret was found")
    if cond.invalid:
        ready = cond("Ready", False, "InvalidSpec", _describe(cond.invalid))
    elif spec.get("disabled"):
        ready = cond("Ready", False, "Disabled", "spec.disabled is true: it authenticates nobody")
    elif count == 0:
        ready = cond("Ready", False, "NoCredentials",
                     "no usable credential: see ResolvedRefs" if cond.unresolved
                     else "spec.credentials is empty")
    else:
        ready = cond("Ready", True, "Ready",
                     f"{count} credential{'s' if count != 1 else ''} usable")
    if compiled_consumer is not None:
        username = compiled_consumer.username
    elif isinstance(spec.get("username"), str):
        username = spec["username"]
    else:
        username = cond.ref.name
    return WsConsumerStatus(
        observed_generation=cond.generation,
        conditions=[ready, resolved],
        username=username,
        credentials=count,
    ).wire()


_WARN_WHEN_FALSE = {"Accepted", "ResolvedRefs", "Ready"}


def transitions(ref: ObjectRef, old: Status | None, new: Status) -> list[Event]:
    """Events for conditions whose status changed (or are new and false)."""
    before = {c["type"]: c for c in ((old or {}).get("conditions") or [])}
    events = []
    for condition in new["conditions"]:
        kind, status = condition["type"], condition["status"]
        prior = before.get(kind)
        if prior is not None and prior.get("status") == status and \
                prior.get("reason") == condition["reason"]:
            continue
        if prior is None and status == "True" and kind not in ("Accepted", "Ready"):
            continue  # a healthy first status needs one event (Accepted/Ready), not three
        if status == "False" and kind in _WARN_WHEN_FALSE:
            events.append(Event(ref, "Warning", condition["reason"], condition["message"]))
        elif status == "True":
            events.append(Event(ref, "Normal", condition["reason"], condition["message"]))
    return events
