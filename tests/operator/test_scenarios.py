"""What a client sees through proxies driven by the real operator, as the cluster changes."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.kube.operator import OperatorThread
from tests.kube.store import ApiError
from tests.support import KEY, Admin, consumer_objects, eventually, objects_for, route_of
from wsgate.processes import WsgateProcess

# Serial: asserts a change is enforced within a second of its write.
pytestmark = pytest.mark.serial

CR = "wsgate.io/v1alpha1"


def conditions(obj):
    return {c["type"]: (c["status"], c["reason"])
            for c in (obj.get("status") or {}).get("conditions") or []}


async def programmed(api, name="echo"):
    route = api.get(CR, "WsRoute", name)
    assert conditions(route).get("Programmed") == ("True", "Programmed"), route.get("status")
    return route


async def refused_status(url, headers):
    try:
        async with connect(url, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.fixture
async def cluster(api, proxies, operator, apply, upstream):
    """The quickstart on one proxy pod, programmed, plus a second consumer."""
    proxies.start("proxy-a", 0)
    apply(*objects_for(upstream.port), *consumer_objects("jane", "jane-key"))
    await eventually(lambda: programmed(api), timeout=15)
    return proxies


async def test_key_rotation_closes_live_sessions_within_a_second(api, cluster):
    url = cluster.url("proxy-a")
    john = await connect(url, additional_headers=KEY)
    jane = await connect(url, additional_headers={"apikey": "jane-key"})
    secret = api.get("v1", "Secret", "john-key")
    secret["data"]["key"] = base64.b64encode(b"john-key-2").decode()
    written = time.monotonic()
    api.apply(secret)
    await asyncio.wait_for(john.wait_closed(), 1.0)
    assert time.monotonic() - written < 1.0
    assert (john.close_code, john.close_reason) == (1008, "credential revoked")
    assert await refused_status(url, KEY) == 401
    assert await refused_status(url, {"apikey": "john-key-2"}) == 101
    await jane.send("untouched")
    assert await jane.recv() == "untouched"
    await jane.close()


@pytest.mark.parametrize("change", ["delete", "disable"])
async def test_consumer_gone_closes_only_its_sessions(api, cluster, change):
    url = cluster.url("proxy-a")
    john = await connect(url, additional_headers=KEY)
    jane = await connect(url, additional_headers={"apikey": "jane-key"})
    if change == "delete":
        api.delete(CR, "WsConsumer", "jane")
    else:
        consumer = api.get(CR, "WsConsumer", "jane")
        consumer["spec"]["disabled"] = True
        api.apply(consumer)
    await asyncio.wait_for(jane.wait_closed(), 2)
    assert jane.close_code == 1008
    await john.send("still here")
    assert await john.recv() == "still here"
    await john.close()


async def test_endpoints_scale_and_removed_endpoints_end_their_sessions(api, proxies, operator,
                                                                        apply):
    echoes = {name: WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", name).start()
              for name in "abc"}
    try:
        proxies.start("proxy-a", 0)
        apply(*objects_for(echoes["a"].port, echoes["b"].port))
        await eventually(lambda: programmed(api), timeout=15)
        url = proxies.url("proxy-a")

        async def served(count):
            names = set()
            for _ in range(count):
                async with connect(url, additional_headers=KEY) as ws:
                    names.add((await ws.recv()).removeprefix("Request served by "))
            return names

        assert await served(4) == {"a", "b"}
        apply(*objects_for(echoes["a"].port, echoes["b"].port, echoes["c"].port))
        await eventually(lambda: _endpoints(api, 3))
        assert await served(6) == {"a", "b", "c"}

        on_c = None
        while on_c is None:
            ws = await connect(url, additional_headers=KEY)
            if (await ws.recv()).endswith(" c"):
                on_c = ws
            else:
                await ws.close()
        for name in ("b", "c"):
            api.delete("discovery.k8s.io/v1", "EndpointSlice", f"s{echoes[name].port}")
        await eventually(lambda: _endpoints(api, 1))
        assert await served(3) == {"a"}
        echoes["c"].stop()  # the endpoint goes: its session ends with it
        await asyncio.wait_for(on_c.wait_closed(), 5)
    finally:
        for process in echoes.values():
            process.stop()


async def _endpoints(api, count):
    assert api.get(CR, "WsRoute", "echo")["status"]["endpoints"] == count


async def test_a_new_proxy_pod_gets_the_config_and_a_down_one_catches_up(api, cluster):
    second = cluster.start("proxy-b", 1)

    async def ready(process):
        host, port = process.address("admin_listen")
        status, body = await Admin(port, token=None, host=host).request("GET", "/readyz")
        assert status == 200, body

    await eventually(lambda: ready(second), timeout=10)
    await eventually(lambda: _synced(api, 2, 2))

    # proxy-b goes down (its pod stays); the config changes; it comes back and catches up.
    second.stop()
    route = api.get(CR, "WsRoute", "echo")
    route["spec"]["paths"].append({"type": "Exact", "value": "/new"})
    api.apply(route)
    await eventually(lambda: _synced(api, 1, 2), timeout=10)
    cluster.start("proxy-b", 1, pod=False)
    await eventually(lambda: _synced(api, 2, 2), timeout=15)
    async with connect(cluster.url("proxy-b", "/new"), additional_headers=KEY) as ws:
        await ws.send("caught up")
        assert await ws.recv() == "caught up"


async def _synced(api, synced, total):
    status = api.get(CR, "WsRoute", "echo")["status"]
    assert status["proxies"] == {"synced": synced, "total": total}


def events_for(api, name):
    return [(e["type"], e["reason"]) for e in api.objects("v1", "Event")
            if e["involvedObject"]["name"] == name]


async def test_invalid_objects_are_reported_and_nothing_else_is_disturbed(api, cluster, apply):
    base = route_of(objects_for(1))
    apply(
        {**base, "metadata": {"name": "lost"},
         "spec": {**base["spec"], "paths": [{"value": "/lost"}],
                  "backend": {"service": {"name": "nowhere", "port": 80}}}},
        {**base, "metadata": {"name": "sourceless"},  # only the compiler catches this one
         "spec": {**base["spec"], "paths": [{"value": "/h"}],
                  "auth": {"methods": ["KeyAuth"], "keyAuth": {
                      "header": "", "query": "", "subprotocol": False}}}},
        {"apiVersion": CR, "kind": "WsConsumer", "metadata": {"name": "ghost"},
         "spec": {"credentials": [{"type": "KeyAuth", "secretRef": {"name": "missing"}}]}},
    )
    with pytest.raises(ApiError) as info:  # the API server's schema refuses this one
        api.apply({**base, "metadata": {"name": "bad"},
                   "spec": {**base["spec"], "paths": [{"type": "Regex", "value": "/x"}]}})
    assert info.value.status == 422
    assert "spec.paths[0].type" in info.value.message
    with pytest.raises(ApiError) as info:  # and its CEL rules this one
        api.apply({**base, "metadata": {"name": "unhashed"},
                   "spec": {**base["spec"], "backend": {
                       "service": {"name": "echo", "port": 8080},
                       "loadBalancing": {"algorithm": "ConsistentHash"}}}})
    assert info.value.status == 422
    assert "spec.backend.loadBalancing: ConsistentHash needs hashOn" in info.value.message

    async def reported():
        assert conditions(api.get(CR, "WsRoute", "lost"))["ResolvedRefs"] == (
            "False", "BackendNotFound")
        assert conditions(api.get(CR, "WsRoute", "sourceless"))["Accepted"] == (
            "False", "InvalidSpec")
        assert conditions(api.get(CR, "WsConsumer", "ghost"))["ResolvedRefs"] == (
            "False", "SecretNotFound")
        assert ("Warning", "BackendNotFound") in events_for(api, "lost")
        assert ("Warning", "InvalidSpec") in events_for(api, "sourceless")
        assert ("Warning", "SecretNotFound") in events_for(api, "ghost")

    await eventually(reported, timeout=10)
    message = next(c["message"] for c in api.get(CR, "WsRoute", "sourceless")["status"]
                   ["conditions"] if c["type"] == "Accepted")
    assert "KeyAuth needs at least one source" in message
    await programmed(api)  # the quickstart route is untouched
    async with connect(cluster.url("proxy-a"), additional_headers=KEY) as ws:
        await ws.send("undisturbed")
        assert await ws.recv() == "undisturbed"


async def test_operator_restart_keeps_traffic_and_pushes_nothing_new(
        api, cluster, operator, operator_options):
    url = cluster.url("proxy-a")
    live = await connect(url, additional_headers=KEY)
    await operator.stop()
    await live.send("operator gone")
    assert await live.recv() == "operator gone"  # proxies serve their config throughout
    assert await refused_status(url, KEY) == 101
    async with OperatorThread(operator_options) as restarted:
        async def converged(memo):
            # Its first build (the whole view), then every proxy asked what it runs and
            # pushed to only if it had to be.
            await memo.reconciler.wait_for_build(0)
            await memo.pusher.wait_idle()
            return (memo.pusher.running(), memo.reconciler.compiled.config.version,
                    memo.metrics.value("wsgate_operator_pushes_total", outcome="ok"))

        running, version, pushes = await restarted.on_loop(converged)
        assert running == {"proxy-a": version}
        assert pushes == 0  # the restarted operator's own count: nothing needed pushing
        await eventually(lambda: programmed(api))
    await live.send("still")
    assert await live.recv() == "still"
    await live.close()


async def test_a_restarted_operator_pushes_only_what_changed_while_it_was_down(
        api, cluster, operator, operator_options):
    cluster.start("proxy-b", 1)
    await eventually(lambda: _synced(api, 2, 2), timeout=15)
    await operator.stop()
    # While no operator runs: john's key rotated, jane gone. Both proxies run a version
    # the restarted operator never built.
    secret = api.get("v1", "Secret", "john-key")
    secret["data"]["key"] = base64.b64encode(b"john-key-2").decode()
    api.apply(secret)
    api.delete(CR, "WsConsumer", "jane")
    async with OperatorThread(operator_options) as restarted:
        async def converged(memo):
            await memo.reconciler.wait_for_build(0)
            await memo.pusher.wait_idle()
            return (memo.pusher.running(), memo.reconciler.compiled.version, {
                kind: memo.metrics.value("wsgate_operator_push_bytes_total", kind=kind)
                for kind in ("delta", "full")},
                memo.metrics.value("wsgate_operator_listings_total", outcome="used"))

        running, version, pushed, listed = await restarted.on_loop(converged)
        assert running == {"proxy-a": version, "proxy-b": version}
        assert listed == 2  # each proxy said what it runs, and got what differs from it
        assert pushed["full"] == 0
        assert pushed["delta"] > 0
    for name in ("proxy-a", "proxy-b"):
        url = cluster.url(name)
        assert await refused_status(url, KEY) == 401
        assert await refused_status(url, {"apikey": "john-key-2"}) == 101
        assert await refused_status(url, {"apikey": "jane-key"}) == 401


async def test_a_failing_push_is_an_event_on_the_proxy_pod(api, proxies, operator, apply,
                                                           upstream):
    # A proxy whose admin token differs from the operator's refuses every push.
    proxies.start("proxy-a", 0)
    apply(*objects_for(upstream.port))
    await eventually(lambda: programmed(api), timeout=15)
    proxies.start("stranger", 1, token="another-token")

    async def reported():
        events = [e for e in api.objects("v1", "Event", "wsgate-system")
                  if e["involvedObject"]["name"] == "stranger"]
        assert [(e["type"], e["reason"]) for e in events] == [("Warning", "PushFailed")]
        assert "must share the same token" in events[0]["message"]

    await eventually(reported, timeout=10)
    await eventually(lambda: _synced(api, 1, 2))
