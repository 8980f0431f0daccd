"""The incremental compiler is the full compile, step by step.

Random sequences of creates, updates and deletes of every kind the compiler reads
(routes with selectors, names, TLS and CA Secrets; consumers sharing credentials;
Secrets of every type, labelled or not, malformed; Services and EndpointSlices moving
between Services), each applied to one long-lived Compiler; after every step its
result must equal a fresh compile of the same objects: every config item, every
problem, every ready-endpoint count, every status. And what a step reports as changed
is exactly what changed: the items, and every object whose status moved.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.certs import TestCA
from wsgate_operator.compiler import Compiled, ObjectRef, Snapshot, compile_snapshot
from wsgate_operator.compiler.build import Compiler
from wsgate_operator.status import ProxySync, consumer_status, route_status

CR = "wsgate.io/v1alpha1"
SECRETS = ["a-key", "b-key", "tls", "ca"]
CONSUMERS = ["a", "b"]
ROUTES = ["r1", "r2"]
SERVICES = ["echo", "other"]
SLICES = ["s1", "s2"]

_CA = TestCA()
_LEAF = _CA.issue("a.example.com", "*.example.com")
CA_PEM = _CA.cert.public_bytes(__import__("cryptography").hazmat.primitives.serialization
                               .Encoding.PEM).decode()


def meta(name: str, namespace: str, labels: dict[str, str] | None = None,
         generation: Any = None) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        found["labels"] = labels
    if generation is not None:
        found["generation"] = generation
    return found


labels = st.none() | st.fixed_dictionaries({}, optional={"team": st.sampled_from(["x", "y"])})
# Mostly the default namespace, so that objects meet: consumers share keys, selectors
# choose consumers, routes find their Services.
namespaces = st.sampled_from(["default"] * 4 + ["team"])


def weighted(*choices: tuple[int, Any]) -> Any:
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy)


credential_values = weighted(
    (7, st.fixed_dictionaries({"key": st.sampled_from(["k1", "k2"])})),
    (1, st.fixed_dictionaries({"username": st.sampled_from(["u1", "u2"]),
                               "password": st.just("pw")})),
    (1, st.fixed_dictionaries({"issuer": st.sampled_from(["i1", "i2"]),
                               "secret": st.just("s" * 32)},
                              optional={"algorithm": st.sampled_from(["HS256", "XX"])})),
    (1, st.sampled_from([{"key": 12345}, {}])),  # malformed, or lacking what is needed
)
tls_values = st.sampled_from([{"tls.crt": _LEAF.cert_pem, "tls.key": _LEAF.key_pem}] * 3
                             + [{"tls.crt": "not a certificate", "tls.key": "nor a key"}])
ca_values = st.sampled_from([{"ca.crt": CA_PEM}] * 3 + [{"ca.crt": "not PEM"}])


@st.composite
def secret(draw: Any, name: str, namespace: str) -> dict[str, Any]:
    labelled = draw(st.integers(0, 6)) > 0
    values = {"tls": tls_values, "ca": ca_values}.get(name, credential_values)
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": meta(name, namespace,
                             {"wsgate.io/credential": "true"} if labelled else None),
            "stringData": draw(values)}


credential = st.fixed_dictionaries({
    "type": st.sampled_from(["KeyAuth"] * 5 + ["BasicAuth", "JWT"]),
    "secretRef": st.fixed_dictionaries({"name": st.sampled_from(["a-key"] * 3 + SECRETS)})})


@st.composite
def consumer(draw: Any, name: str, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"credentials": draw(st.lists(credential, min_size=1, max_size=2))}
    if draw(st.integers(0, 4)) == 0:
        spec["disabled"] = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        spec["username"] = ""  # invalid: too short
    elif draw(st.booleans()):
        spec["username"] = draw(st.sampled_from(["alice", "bob"]))
    return {"apiVersion": CR, "kind": "WsConsumer",
            "metadata": meta(name, namespace, draw(labels),
                             draw(st.sampled_from([None, 1, 2, 2, 2, "abc"]))),
            "spec": spec}


allowed = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"names": st.lists(st.sampled_from(CONSUMERS), max_size=2)}),
    st.just({"selector": {"matchLabels": {"team": "x"}}}),
    st.just({"selector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}),
    st.just({"selector": {"matchLabels": {"team": "x"}}}),
    st.just({"names": ["b"], "selector": {"matchLabels": {"team": "y"}}}),
)


@st.composite
def route(draw: Any, name: str, namespace: str) -> dict[str, Any]:
    hosts = draw(st.sampled_from([[], ["a.example.com"], ["a.example.com", "*.example.com"]]))
    backend: dict[str, Any] = {"service": {"name": draw(st.sampled_from(SERVICES)),
                                           "port": draw(st.sampled_from([8080, "ws", 9999]))}}
    if draw(st.booleans()):
        backend["tls"] = draw(st.sampled_from([{}, {"caSecretRef": {"name": "ca"}}]))
    spec: dict[str, Any] = {
        "paths": draw(st.sampled_from([[{"value": f"/{name}"}], [{"value": "/shared"}], []])),
        "backend": backend,
        "auth": {"methods": ["KeyAuth"], "allowedConsumers": draw(allowed)},
    }
    if hosts:
        spec["hosts"] = hosts
        if draw(st.booleans()):
            spec["tls"] = {"secretName": "tls"}
    return {"apiVersion": CR, "kind": "WsRoute",
            "metadata": meta(name, namespace, None, draw(st.sampled_from([None, 1, 3]))),
            "spec": spec}


@st.composite
def service(draw: Any, name: str, namespace: str) -> dict[str, Any]:
    ports = draw(st.sampled_from([
        [{"name": "ws", "port": 8080}], [{"port": 8080}], [{"name": "ws", "port": 9999}],
        [{"name": "ws", "port": 70000}],  # malformed
    ]))
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name, namespace),
            "spec": {"ports": ports}}


@st.composite
def endpoint_slice(draw: Any, name: str, namespace: str) -> dict[str, Any]:
    owner = draw(st.sampled_from([*SERVICES, None]))
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(name, namespace,
                             {"kubernetes.io/service-name": owner} if owner else None),
            "addressType": "IPv4",
            "ports": [{"name": draw(st.sampled_from(["ws", ""])),
                       "port": draw(st.sampled_from([9001, 9002]))}],
            "endpoints": [{"addresses": [draw(st.sampled_from(["10.0.0.1", "10.0.0.2"]))],
                           "conditions": {"ready": draw(st.booleans())}}]}


KINDS = {"Secret": (SECRETS, secret), "WsConsumer": (CONSUMERS, consumer),
         "WsRoute": (ROUTES, route), "Service": (SERVICES, service),
         "EndpointSlice": (SLICES, endpoint_slice)}


@st.composite
def step(draw: Any) -> tuple[ObjectRef, dict[str, Any] | None]:
    kind = draw(st.sampled_from(["Secret"] * 3 + ["WsConsumer"] * 3 + ["WsRoute"] * 2
                                + ["Service", "EndpointSlice"]))
    names, make = KINDS[kind]
    ref = ObjectRef(kind, draw(namespaces), draw(st.sampled_from(names)))
    if draw(st.integers(0, 5)) == 0:
        return ref, None  # deleted
    return ref, draw(make(ref.name, ref.namespace))


def statuses(compiled: Compiled, objects: dict[ObjectRef, dict[str, Any]]
             ) -> dict[ObjectRef, dict[str, Any]]:
    found = {}
    for ref, obj in objects.items():
        if ref.kind == "WsRoute":
            found[ref] = route_status(obj, compiled, ProxySync(1, 2), "T")
        elif ref.kind == "WsConsumer":
            found[ref] = consumer_status(obj, compiled, "T")
    return found


def _ref(obj: dict[str, Any]) -> ObjectRef:
    return ObjectRef(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])


def _set(*objects: dict[str, Any]) -> list[tuple[ObjectRef, dict[str, Any] | None]]:
    return [(_ref(o), o) for o in objects]


def _key(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": meta(name, "default", {"wsgate.io/credential": "true"}),
            "stringData": {"key": value}}


def _consumer(name: str, secret_name: str, team: str | None = None) -> dict[str, Any]:
    return {"apiVersion": CR, "kind": "WsConsumer",
            "metadata": meta(name, "default", {"team": team} if team else None),
            "spec": {"credentials": [{"type": "KeyAuth", "secretRef": {"name": secret_name}}]}}


def _route(name: str, allowed_consumers: dict[str, Any], service: str = "echo"
           ) -> dict[str, Any]:
    return {"apiVersion": CR, "kind": "WsRoute", "metadata": meta(name, "default"),
            "spec": {"paths": [{"value": f"/{name}"}],
                     "backend": {"service": {"name": service, "port": 8080}},
                     "auth": {"methods": ["KeyAuth"], "allowedConsumers": allowed_consumers}}}


def _slice(name: str, service: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta(name, "default", {"kubernetes.io/service-name": service}),
            "addressType": "IPv4", "ports": [{"name": "", "port": 9001}],
            "endpoints": [{"addresses": ["10.0.0.1"]}]}


_SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": meta("echo", "default"),
            "spec": {"ports": [{"port": 8080}]}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(step(), min_size=1, max_size=3), min_size=1, max_size=12))
# The interactions that matter, always tried: a second consumer taking a key the first
# holds (both are refused), and giving it back; a consumer a selector comes to choose;
# an EndpointSlice moving from one Service to another.
@example([_set(_key("a-key", "k1"), _consumer("a", "a-key")), _set(_consumer("b", "a-key")),
          [(_ref(_consumer("b", "a-key")), None)]])
@example([_set(_route("r1", {"selector": {"matchLabels": {"team": "x"}}})),
          _set(_consumer("a", "a-key", team="x")), _set(_consumer("a", "a-key", team="y"))])
@example([_set(_SERVICE, _route("r1", {}), _slice("s1", "echo")),
          _set(_slice("s1", "other")), _set(_slice("s1", "echo"))])
def test_every_step_equals_a_fresh_compile(batches):
    compiler = Compiler()
    synced = Compiler()  # fed whole snapshots, as the operator's reconciler feeds it
    objects: dict[ObjectRef, dict[str, Any]] = {}
    before = compiler.result()
    before_statuses: dict[ObjectRef, dict[str, Any]] = {}
    for batch in batches:
        changes = {}
        for ref, obj in batch:
            changes[ref] = copy.deepcopy(obj)
            if obj is None:
                objects.pop(ref, None)
            else:
                objects[ref] = obj
        compiler.update(changes)
        result = compiler.result()
        synced.sync(Snapshot.of(objects.values()))
        from_snapshot = synced.result()
        fresh = compile_snapshot(Snapshot.of(objects.values()))
        assert result.items == fresh.items
        assert result.problems_by_ref == fresh.problems_by_ref
        assert result.route_endpoints == fresh.route_endpoints
        assert result.version == fresh.version == fresh.config.content_hash()
        assert (from_snapshot.items, from_snapshot.problems_by_ref) == (
            fresh.items, fresh.problems_by_ref)
        assert from_snapshot.changed_items == result.changed_items
        now = statuses(result, objects)
        assert now == statuses(fresh, objects)
        # What changed is reported: the items exactly, and every object whose status moved.
        moved_items = {(kind, key) for kind in result.items
                       for key in {*result.items[kind], *before.items[kind]}
                       if result.items[kind].get(key) != before.items[kind].get(key)}
        assert result.changed_items == moved_items
        for ref, status in now.items():
            if status != before_statuses.get(ref):
                assert ref in result.changed_refs, ref
        before, before_statuses = result, now
