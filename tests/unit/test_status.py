from __future__ import annotations

from tests.support import quickstart_objects, route_of
from wsgate_operator.compiler import ObjectRef, Snapshot, compile_snapshot
from wsgate_operator.status import ProxySync, consumer_status, route_status, transitions


def build(objects):
    return compile_snapshot(Snapshot.of(objects))


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_route_conditions_and_counts():
    objects = quickstart_objects(1, 2)
    route = route_of(objects)
    route["metadata"]["generation"] = 4
    status = route_status(route, build(objects), ProxySync(2, 3), "T1")
    assert conditions(status) == {"Accepted": ("True", "Accepted"),
                                  "ResolvedRefs": ("True", "ResolvedRefs"),
                                  "Programmed": ("False", "Pending")}
    assert (status["observedGeneration"], status["endpoints"]) == (4, 2)
    assert status["proxies"] == {"synced": 2, "total": 3}
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])


def test_no_proxies_says_so():
    objects = quickstart_objects(1, 2)
    status = route_status(route_of(objects), build(objects), ProxySync(0, 0), "T")
    assert conditions(status)["Programmed"] == ("False", "NoProxies")


def test_programmed_messages_say_what_is_counted():
    # The operator counts the proxy pods it pushes to: phase Running, with an IP (not
    # readiness, which a proxy only reaches once it holds a config).
    objects = quickstart_objects(1, 2)
    route = route_of(objects)
    compiled = build(objects)
    messages = {sync: next(c["message"] for c in route_status(route, compiled, sync, "T")[
        "conditions"] if c["type"] == "Programmed")
        for sync in (ProxySync(0, 0), ProxySync(2, 3), ProxySync(1, 1), ProxySync(3, 3))}
    assert messages == {
        ProxySync(0, 0): "no running proxy pod with an IP matches the operator's proxy "
                         "selector",
        ProxySync(2, 3): "2 of 3 running proxy pods run this generation",
        ProxySync(1, 1): "the running proxy pod runs this generation",
        ProxySync(3, 3): "all 3 running proxy pods run this generation",
    }


def test_transition_time_kept_while_the_status_holds():
    objects = quickstart_objects(1, 2)
    route = route_of(objects)
    first = route_status(route, build(objects), ProxySync(1, 1), "T1")
    route["status"] = first
    again = route_status(route, build(objects), ProxySync(1, 1), "T2")
    assert again == first  # identical: not written again
    objects = [o for o in objects if o["kind"] != "Service"]
    changed = route_status(route, build(objects), ProxySync(1, 1), "T3")
    times = {c["type"]: c["lastTransitionTime"] for c in changed["conditions"]}
    assert times == {"Accepted": "T1", "ResolvedRefs": "T3", "Programmed": "T1"}


def test_events_on_transitions_only():
    objects = quickstart_objects(1, 2)
    route = route_of(objects)
    ref = ObjectRef.of(route)
    healthy = route_status(route, build(objects), ProxySync(1, 1), "T")
    assert [(e.type, e.reason) for e in transitions(ref, None, healthy)] == [
        ("Normal", "Accepted")]
    assert transitions(ref, healthy, healthy) == []
    broken = route_status(route, build([o for o in objects if o["kind"] != "Service"]),
                          ProxySync(1, 1), "T")
    (event,) = transitions(ref, healthy, broken)
    assert (event.type, event.reason) == ("Warning", "BackendNotFound")
    assert "Service default/echo does not exist" in event.message


def test_consumer_conditions():
    objects = quickstart_objects(1, 2)
    consumer = next(o for o in objects if o["kind"] == "WsConsumer")
    status = consumer_status(consumer, build(objects), "T")
    assert conditions(status) == {"Ready": ("True", "Ready"),
                                  "ResolvedRefs": ("True", "ResolvedRefs")}
    assert (status["username"], status["credentials"]) == ("john", 1)
    consumer["spec"]["disabled"] = True
    assert conditions(consumer_status(consumer, build(objects), "T"))["Ready"] == (
        "False", "Disabled")
    consumer["spec"]["disabled"] = False
    missing = [o for o in objects if o["kind"] != "Secret"]
    status = consumer_status(consumer, build(missing), "T")
    assert conditions(status) == {"Ready": ("False", "NoCredentials"),
                                  "ResolvedRefs": ("False", "SecretNotFound")}
    message = next(c for c in status["conditions"] if c["type"] == "ResolvedRefs")["message"]
    assert message.startswith("spec.credentials[0].secretRef: Secret default/john-key")
