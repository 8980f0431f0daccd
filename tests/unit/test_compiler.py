"""The compiler: every field it reads and every problem it reports."""

from __future__ import annotations

import base64
import copy
import hashlib
import json

import pytest

from tests.support import consumer_objects, endpoint_slice, quickstart_objects
from wsgate_operator.compiler import ObjectRef, Snapshot, compile_snapshot


def compile_(objects):
    return compile_snapshot(Snapshot.of(objects))


def objects(port_a=9001, port_b=9002):
    return quickstart_objects(port_a, port_b)


def find(objs, kind, name=None):
    return next(o for o in objs if o["kind"] == kind and (name is None
                                                        or o["metadata"]["name"] == name))


def route_ref(name="echo", ns="default"):
    return ObjectRef("WsRoute", ns, name)


def endpoints_of(compiled, route):
    """The ready endpoints a compiled route's sessions go to, as text."""
    (found,) = [e for e in compiled.config.endpoints if e.key == route.endpoints_key]
    return [str(e) for e in found.endpoints]


def reasons(compiled, ref=None):
    return [p.reason for p in compiled.problems if ref is None or p.ref == ref]


def test_quickstart_compiles_without_problems():
    compiled = compile_(objects())
    assert compiled.problems == []
    (route,) = compiled.config.routes
    assert route.key == "default/echo"
    assert [(p.type, p.value) for p in route.paths] == [("Prefix", "/.ws")]
    assert route.endpoints_key == "default/echo:8080"
    assert endpoints_of(compiled, route) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert route.auth.mode == "Handshake"
    assert route.auth.methods == ("KeyAuth",)
    assert route.auth.key_auth.header == "apikey"
    assert route.auth.key_auth.query == "apikey"
    assert route.auth.key_auth.subprotocol is True
    assert route.auth.hide_credentials is True
    assert route.auth.allowed_consumers is None
    (consumer,) = compiled.config.consumers
    assert (consumer.key, consumer.username) == ("default/john", "john")
    assert consumer.keys[0].sha256 == hashlib.sha256(b"john-key").hexdigest()
    assert compiled.route_endpoints == {route_ref(): 2}


def test_keys_never_appear_in_the_clear():
    text = json.dumps(compile_(objects()).config.model_dump(mode="json"))
    assert "john-key\"" not in text.replace("secret/john-key", "")


def test_version_is_a_content_hash():
    one = compile_(objects()).config
    again = compile_(list(reversed(objects()))).config
    assert one.version == again.version == one.content_hash()
    other = compile_(objects(port_a=9003)).config
    assert other.version != one.version


def test_every_route_field_is_compiled():
    objs = objects()
    route = find(objs, "WsRoute")
    route["metadata"]["generation"] = 7
    route["spec"] = {
        "hosts": ["ws.example.com", "*.example.org"],
        "paths": [{"type": "Exact", "value": "/chat"}, {"value": "/rooms/"}],
        "backend": {
            "service": {"name": "echo", "port": "ws"},
            "path": "/internal",
            "loadBalancing": {"algorithm": "RoundRobin"},
            "connectTimeoutSeconds": 2.5,
            "retries": 3,
        },
        "auth": {
            "methods": ["KeyAuth"],
            "keyAuth": {"header": "x-api-key", "query": "", "cookie": "token",
                        "subprotocol": False},
            "hideCredentials": False,
            "allowedConsumers": {"names": ["john"]},
        },
    }
    compiled = compile_(objs)
    assert compiled.problems == []
    (r,) = compiled.config.routes
    assert r.generation == 7
    assert r.hosts == ("ws.example.com", "*.example.org")
    assert [(p.type, p.value) for p in r.paths] == [("Exact", "/chat"), ("Prefix", "/rooms/")]
    assert (r.backend.port, len(endpoints_of(compiled, r))) == ("ws", 2)  # port by name
    assert r.backend.path_rewrite == "/internal"
    assert (r.backend.connect_timeout_seconds, r.backend.retries) == (2.5, 3)
    k = r.auth.key_auth
    assert (k.header, k.query, k.cookie, k.subprotocol) == ("x-api-key", "", "token", False)
    assert r.auth.hide_credentials is False
    assert r.auth.allowed_consumers == ("john",)


def test_public_route_is_said_explicitly():
    objs = objects()
    find(objs, "WsRoute")["spec"]["auth"] = {"mode": "None"}
    (r,) = compile_(objs).config.routes
    assert r.auth.mode == "None"
    del find(objs, "WsRoute")["spec"]["auth"]
    compiled = compile_(objs)
    assert compiled.config.routes == ()
    (problem,) = compiled.problems
    assert (problem.field, problem.message, problem.invalid) == ("spec.auth", "is required", True)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: s.update(paths=[]), "spec.paths", "at least 1"),
        (lambda s: s["paths"][0].update(type="Regex"), "spec.paths[0].type", "Exact"),
        (lambda s: s["paths"][0].update(value="no-slash"), "spec.paths[0].value", "pattern"),
        (lambda s: s.update(hosts=["Bad_Host"]), "spec.hosts[0]", "DNS name"),
        (lambda s: s["backend"]["service"].update(port=70000), "spec.backend.service.port",
         "65535"),
        (lambda s: s["auth"].update(methods=["Magic"]), "spec.auth.methods[0]", "'JWT'"),
        (lambda s: s["auth"].update(methods=[]), "spec.auth", "at least one entry"),
        (lambda s: s["auth"].update(keyauth={}), "spec.auth.keyauth", "not a known field"),
        (lambda s: s["auth"].update(keyAuth={"header": "", "query": "", "subprotocol": False}),
         "spec.auth", "at least one source"),
        (lambda s: s["backend"].update(retries=-1), "spec.backend.retries", "greater than"),
    ],
)
def test_invalid_route_specs_name_the_field(change, field, words):
    objs = objects()
    change(find(objs, "WsRoute")["spec"])
    compiled = compile_(objs)
    assert compiled.config.routes == ()
    problems = compiled.problems_of(route_ref())
    assert any(p.field == field and words in p.message for p in problems), problems
    assert all(p.reason == "InvalidSpec" and p.invalid for p in problems)
    assert len(compiled.config.consumers) == 1  # the rest still compiles


def test_missing_service_keeps_the_route_with_no_endpoints():
    objs = [o for o in objects() if o["kind"] != "Service"]
    compiled = compile_(objs)
    (r,) = compiled.config.routes
    assert endpoints_of(compiled, r) == []
    (problem,) = compiled.problems
    assert (problem.reason, problem.field, problem.invalid) == (
        "BackendNotFound", "spec.backend.service.name", False)
    assert "Service default/echo does not exist" in problem.message


def test_unknown_port_lists_the_services_ports():
    objs = objects()
    find(objs, "WsRoute")["spec"]["backend"]["service"]["port"] = 8081
    (problem,) = compile_(objs).problems
    assert problem.reason == "PortNotFound"
    assert "8080 (ws)" in problem.message


def test_endpoints_not_ready_or_of_other_services_are_left_out():
    objs = objects()
    find(objs, "EndpointSlice", "echo-b")["endpoints"][0]["conditions"]["ready"] = False
    objs.append(endpoint_slice("other", "other-svc", "10.0.0.9", 80))
    objs.append(endpoint_slice("wrong-port-name", "echo", "10.0.0.8", 80, port_name="metrics"))
    no_conditions = endpoint_slice("implicit", "echo", "10.0.0.7", 8080)
    del no_conditions["endpoints"][0]["conditions"]
    objs.append(no_conditions)
    compiled = compile_(objs)
    (r,) = compiled.config.routes
    assert endpoints_of(compiled, r) == ["10.0.0.7:8080", "127.0.0.1:9001"]


def test_secret_data_is_base64_and_string_data_wins():
    objs = objects()
    secret = find(objs, "Secret")
    secret["data"] = {"key": base64.b64encode(b"from-data").decode()}
    del secret["stringData"]
    (c,) = compile_(objs).config.consumers
    assert c.keys[0].sha256 == hashlib.sha256(b"from-data").hexdigest()
    secret["stringData"] = {"key": "from-string-data"}
    (c,) = compile_(objs).config.consumers
    assert c.keys[0].sha256 == hashlib.sha256(b"from-string-data").hexdigest()


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        (lambda objs: objs.remove(find(objs, "Secret")), "SecretNotFound",
         "Secret default/john-key does not exist"),
        (lambda objs: find(objs, "Secret")["metadata"].update(labels={}), "SecretNotLabelled",
         'wsgate.io/credential: "true"'),
        (lambda objs: find(objs, "Secret").update(stringData={"other": "x"}), "SecretKeyMissing",
         "has no non-empty key 'key'"),
    ],
)
def test_credential_problems_name_the_secret_never_the_value(change, reason, words):
    objs = objects()
    change(objs)
    compiled = compile_(objs)
    (problem,) = compiled.problems
    assert problem.ref == ObjectRef("WsConsumer", "default", "john")
    assert (problem.reason, problem.field) == (reason, "spec.credentials[0].secretRef")
    assert words in problem.message
    assert "john-key\"" not in str(problem)
    (c,) = compiled.config.consumers
    assert c.keys == ()  # the consumer exists but authenticates nobody


def test_disabled_consumer_is_left_out():
    objs = objects()
    find(objs, "WsConsumer")["spec"]["disabled"] = True
    assert compile_(objs).config.consumers == ()


def test_username_defaults_to_the_name():
    objs = objects()
    find(objs, "WsConsumer")["spec"]["username"] = "John Doe"
    (c,) = compile_(objs).config.consumers
    assert (c.name, c.username) == ("john", "John Doe")


def test_a_key_shared_by_two_consumers_is_refused_for_both():
    objs = objects() + consumer_objects("jane", "john-key") + consumer_objects("ann", "ann-key")
    compiled = compile_(objs)
    keys = {c.name: len(c.keys) for c in compiled.config.consumers}
    assert keys == {"john": 0, "jane": 0, "ann": 1}
    assert sorted((p.ref.name, p.reason) for p in compiled.problems) == [
        ("jane", "DuplicateCredential"), ("john", "DuplicateCredential")]


def test_the_same_key_in_two_namespaces_is_fine():
    other = copy.deepcopy(objects())
    for o in other:
        o["metadata"]["namespace"] = "team-b"
    compiled = compile_(objects() + other)
    assert compiled.problems == []
    assert [c.key for c in compiled.config.consumers] == ["default/john", "team-b/john"]


def test_allowed_consumers_by_label_selector():
    objs = objects() + consumer_objects("jane", "k1", {"tier": "gold"}) + consumer_objects(
        "ann", "k2", {"tier": "free"})
    find(objs, "WsRoute")["spec"]["auth"]["allowedConsumers"] = {
        "names": ["john"],
        "selector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                           "values": ["gold"]}]},
    }
    (r,) = compile_(objs).config.routes
    assert r.auth.allowed_consumers == ("jane", "john")


def test_namespace_defaults_to_default():
    compiled = compile_(objects())
    assert {r.namespace for r in compiled.config.routes} == {"default"}


def test_a_consumer_limit_is_compiled_and_checked():
    objs = objects()
    find(objs, "WsConsumer")["spec"]["limits"] = {"maxConnections": 3}
    (consumer,) = compile_(objs).config.consumers
    assert consumer.max_connections == 3
    (plain,) = compile_(objects()).config.consumers
    assert plain.max_connections is None
    find(objs, "WsConsumer")["spec"]["limits"] = {"maxConnections": 0}
    compiled = compile_(objs)
    assert compiled.config.consumers == ()
    (problem,) = compiled.problems
    assert (problem.reason, problem.field) == ("InvalidSpec", "spec.limits.maxConnections")
