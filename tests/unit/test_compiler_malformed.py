"""The compiler fed malformed objects of any shape: it reports, it never raises.

Manifests in standalone mode are not checked by an API server, and one exception out
of the compiler used to kill standalone's file watcher for good. Each case below
names the object and the field in its problem; the property test throws arbitrary
values at every place of the quickstart's objects.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import endpoint_slice, objects_for, quickstart_objects
from wsgate_operator.compiler import SNAPSHOT_KINDS, Compiled, Snapshot, compile_snapshot


def compile_(objects: list[Any]) -> Compiled:
    return compile_snapshot(Snapshot.of(objects))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(o for o in objects
                if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def problem_texts(compiled: Compiled) -> list[str]:
    return [str(p) for p in compiled.problems if p.invalid]


def test_endpoint_slice_port_out_of_range():
    objects = [*objects_for(9001), endpoint_slice("big", "echo", "127.0.0.2", 70000)]
    compiled = compile_(objects)
    assert "EndpointSlice default/big: ports[0].port: must be a port number (1-65535), " \
           "not 70000" in problem_texts(compiled)
    # The rest still compiles: the good slice's endpoint is served.
    (endpoints,) = compiled.config.endpoints
    assert [str(e) for e in endpoints.endpoints] == ["127.0.0.1:9001"]


def test_service_ports_not_a_list():
    objects = objects_for(9001)
    find(objects, "Service")["spec"]["ports"] = 80
    compiled = compile_(objects)
    assert "Service default/echo: spec.ports: must be a list of ports, not a number" \
        in problem_texts(compiled)


def test_generation_not_a_number():
    objects = objects_for(9001)
    find(objects, "WsRoute")["metadata"]["generation"] = "abc"
    compiled = compile_(objects)
    assert "WsRoute default/echo: metadata.generation: must be a non-negative integer, " \
           "not 'abc'" in problem_texts(compiled)
    assert compiled.config.routes == ()


def test_secret_value_not_a_string():
    objects = objects_for(9001)
    secret = find(objects, "Secret")
    secret["stringData"] = {"key": 12345}
    compiled = compile_(objects)
    assert f"Secret default/{secret['metadata']['name']}: stringData.key: must be a string, " \
           "not a number" in problem_texts(compiled)


def test_object_that_is_not_a_mapping():
    snapshot = Snapshot.of(objects_for(9001))
    snapshot.routes.append("a string where an object belongs")  # type: ignore[arg-type]
    compiled = compile_snapshot(snapshot)
    assert any("is not a Kubernetes object (a mapping) but a string" in t
               for t in problem_texts(compiled))


# Values of every JSON/YAML shape, including the ones a typo produces.
values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["", "80", "ws", "abc", "-1", "70000", "KeyAuth", "Exact", "/"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["port", "name", "key"]),
                      children, max_size=3),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a nested object: dict keys and list indexes."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


def replaced(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    obj = copy.copy(obj)
    obj[path[0]] = replaced(obj[path[0]], path[1:], value)
    return obj


BASE = quickstart_objects(9001, 9002)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_anywhere_is_a_problem_never_an_exception(data):
    objects = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(objects) - 1))
        path = data.draw(st.sampled_from(paths(objects[index])))
        objects[index] = replaced(objects[index], path, data.draw(values))
    compiled = compile_(objects)  # must not raise
    for problem in compiled.problems:
        assert problem.message
        assert problem.ref.kind in (*SNAPSHOT_KINDS, "?") or problem.ref.kind


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"kind": st.sampled_from(list(SNAPSHOT_KINDS))},
    optional={"metadata": values, "spec": values, "data": values, "stringData": values,
              "ports": values, "endpoints": values, "addressType": values}), max_size=6))
def test_objects_of_any_shape_compile_without_raising(objects):
    compile_(objects)
