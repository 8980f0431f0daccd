"""Connection limits that hold across every proxy: three real proxy processes sharing a
real redis-server (and Redis going away, coming back empty, or never answering)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.redis_server import SilentServer
from tests.support import (
    Admin,
    compile_objects,
    consumer_objects,
    eventually,
    metric_value,
    objects_for,
    route_of,
)
from wsgate.processes import ProcessFailed, WsgateProcess
from wsgate_proxy.leases import Counter

# Serial: asserts counts converge within a lease or renewal interval.
pytestmark = pytest.mark.serial

JOHN = {"apikey": "john-key"}
JANE = {"apikey": "jane-key"}
PER_CONSUMER = Counter.route_consumer("default", "echo", "default/john", 0).key


@dataclass
class Fleet:
    proxies: list[WsgateProcess]
    objects: list[dict[str, Any]]

    def url(self, i: int, path: str = "/.ws") -> str:
        return f"ws://127.0.0.1:{self.proxies[i].port}{path}"

    def admin(self, i: int) -> Admin:
        return Admin(self.proxies[i].admin_port)

    async def push(self) -> None:
        config = compile_objects(self.objects)
        for i in range(len(self.proxies)):
            status, body = await self.admin(i).put_config(config)
            assert status == 200, body

    def log_events(self, i: int, event: str) -> list[dict[str, Any]]:
        self.proxies[i].output()  # reads what is new
        return [r for r in self.proxies[i].records if r.get("event") == event]


@pytest.fixture
def fleet(start_proxy, upstream, redis_server):
    """fleet(n, *proxy args, limits=..., url=...) -> n proxies sharing the test's Redis,
    serving the quickstart route (with these limits), john, jane, and an unlimited route
    at /open."""
    async def start(n: int = 3, *args: str, limits: dict[str, Any] | None = None,
                    url: str | None = None, consumer_limits: dict[str, Any] | None = None
                    ) -> Fleet:
        objects = [*objects_for(upstream.port), *consumer_objects("jane", "jane-key")]
        route = route_of(objects)
        route["spec"]["limits"] = limits or {}
        unlimited = copy.deepcopy(route)
        unlimited["metadata"]["name"] = "open"
        unlimited["spec"]["paths"] = [{"type": "Prefix", "value": "/open"}]
        unlimited["spec"]["limits"] = {}
        objects.append(unlimited)
        if consumer_limits:
            john = next(o for o in objects if o["kind"] == "WsConsumer"
                        and o["metadata"]["name"] == "john")
            john["spec"]["limits"] = consumer_limits
        proxies = [start_proxy("--limits-redis-url", url or redis_server.url, *args)
                   for _ in range(n)]
        fleet = Fleet(proxies, objects)
        await fleet.push()
        return fleet
    return start


@pytest.fixture
async def peek(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def session(url: str, headers: dict[str, str]):
    ws = await connect(url, additional_headers=headers)
    await ws.send("hello")
    assert await ws.recv() == "hello"
    return ws


async def refusal(url: str, headers: dict[str, str]) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers):
            pass
    return info.value.response.status_code, info.value.response.body.decode()


async def _admitted(url, headers, into):
    into.append(await session(url, headers))


async def _equal(awaitable, expected):
    assert await awaitable == expected


async def test_a_consumer_capped_at_three_across_three_proxies(fleet):
    proxies = await fleet(limits={"maxConnectionsPerConsumer": 3})
    sessions = [await session(proxies.url(i), JOHN) for i in range(3)]
    for i in range(3):  # the fourth, on any proxy
        status, body = await refusal(proxies.url(i), JOHN)
        assert status == 429
        assert "across all proxies" in body
        assert "fleet-wide limit is 3" in body
    others = [await session(proxies.url(0), JANE)]  # another consumer is not affected
    await sessions.pop(1).close()
    await eventually(lambda: _admitted(proxies.url(2), JOHN, sessions))
    assert (await refusal(proxies.url(1), JOHN))[0] == 429
    for ws in sessions + others:
        await ws.send("still")
        assert await ws.recv() == "still"
        await ws.close()


async def test_a_route_and_a_consumer_capped_across_proxies(fleet):
    proxies = await fleet(limits={"maxConnections": 3}, consumer_limits={"maxConnections": 2})
    sessions = [await session(proxies.url(0), JOHN), await session(proxies.url(1, "/open"), JOHN)]
    status, body = await refusal(proxies.url(2), JOHN)  # john's 3rd, on any route
    assert status == 429
    assert "across all routes and proxies" in body
    sessions += [await session(proxies.url(1), JANE), await session(proxies.url(2), JANE)]
    status, body = await refusal(proxies.url(0), JANE)  # the route's 4th
    assert status == 503
    assert "fleet-wide limit of 3 connections" in body
    for ws in sessions:
        await ws.close()


async def test_one_round_trip_for_a_limited_handshake_none_for_another(fleet, peek):
    # Renewals far apart: only handshakes run scripts while this test counts.
    proxies = await fleet(1, "--limits-lease-seconds", "120", "--limits-renew-seconds", "60",
                          limits={"maxConnectionsPerConsumer": 50})
    await (await session(proxies.url(0), JOHN)).close()  # scripts loaded

    async def scripts() -> int:
        return (await peek.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)

    before = await scripts()
    for _ in range(5):
        await (await session(proxies.url(0, "/open"), JOHN)).close()
    assert await scripts() == before
    for _ in range(5):
        await (await session(proxies.url(0), JOHN)).close()
    assert await scripts() == before + 5


async def test_a_killed_proxy_stops_counting_within_the_lease_time(fleet):
    proxies = await fleet(3, "--limits-lease-seconds", "3", "--limits-renew-seconds", "0.5",
                          limits={"maxConnectionsPerConsumer": 2})
    survivor = await session(proxies.url(0), JOHN)
    doomed = await session(proxies.url(1), JOHN)
    proxies.proxies[1].proc.kill()  # SIGKILL: no release, no goodbye
    killed = time.monotonic()
    assert (await refusal(proxies.url(2), JOHN))[0] == 429  # its session still counts
    admitted: list = []
    await eventually(lambda: _admitted(proxies.url(2), JOHN, admitted), timeout=10,
                     interval=0.2)
    assert time.monotonic() - killed < 3 + 1.5
    await survivor.send("alive")
    assert await survivor.recv() == "alive"
    for ws in (survivor, doomed, *admitted):
        await ws.close()


async def test_redis_stopped_with_failure_open_falls_back_to_per_proxy_counts(
        fleet, redis_server):
    proxies = await fleet(2, "--limits-renew-seconds", "0.5", "--limits-lease-seconds", "5",
                          limits={"maxConnectionsPerConsumer": 2})
    live = [await session(proxies.url(0), JOHN), await session(proxies.url(1), JOHN)]
    assert (await refusal(proxies.url(0), JOHN))[0] == 429  # fleet-wide: 2 of 2
    redis_server.stop()
    # Each proxy now counts its own: one more on each, then 429 saying so.
    live.append(await eventually(lambda: session(proxies.url(0), JOHN), timeout=5))
    live.append(await session(proxies.url(1), JOHN))
    for i in range(2):
        status, body = await refusal(proxies.url(i), JOHN)
        assert status == 429
        assert "on this proxy" in body
        status, ready = await proxies.admin(i).request("GET", "/readyz")
        assert (status, ready["status"]) == (200, "ready")
        metrics = await proxies.admin(i).metrics()
        assert metric_value(metrics, "wsgate_limits_store_up") == 0
        assert len(proxies.log_events(i, "limits store unavailable")) == 1  # one per outage
        status, summary = await proxies.admin(i).request("GET", "/config")
        assert summary["limitsStore"]["available"] is False
        assert summary["limitsStore"]["failureMode"] == "open"
        assert summary["limitsStore"]["leases"] == 2
    for ws in live:  # live sessions untouched
        await ws.send("still")
        assert await ws.recv() == "still"

    # Back, empty: every live session is registered again: 4 of 2, so no new one anywhere.
    redis_server.start()
    await eventually(lambda: _store_up(proxies, 0), timeout=5)
    await eventually(lambda: _store_up(proxies, 1), timeout=5)
    for i in range(2):
        status, body = await refusal(proxies.url(i), JOHN)
        assert (status, "across all proxies" in body) == (429, True)
        assert len(proxies.log_events(i, "limits store available again")) == 1
    for ws in live:
        await ws.close()


async def _store_up(proxies: Fleet, i: int) -> None:
    metrics = await proxies.admin(i).metrics()
    assert metric_value(metrics, "wsgate_limits_store_up") == 1


async def test_redis_stopped_with_failure_closed_refuses_limited_handshakes(
        fleet, redis_server):
    proxies = await fleet(2, "--limits-redis-failure", "closed", "--limits-renew-seconds",
                          "0.5", "--limits-lease-seconds", "5",
                          limits={"maxConnectionsPerConsumer": 5})
    live = [await session(proxies.url(0), JOHN), await session(proxies.url(1), JOHN)]
    redis_server.stop()
    for i in range(2):
        status, body = await eventually(lambda i=i: _refused_with(proxies.url(i), 503))
        assert "limits store is unavailable" in body
        # A route without connection limits needs no store.
        live.append(await session(proxies.url(i, "/open"), JOHN))
        status, _ = await proxies.admin(i).request("GET", "/readyz")
        assert status == 200
    for ws in live:
        await ws.send("still")
        assert await ws.recv() == "still"
    redis_server.start()
    live.append(await eventually(lambda: session(proxies.url(0), JOHN), timeout=5))
    for ws in live:
        await ws.close()


async def _refused_with(url: str, expected: int) -> tuple[int, str]:
    status, body = await refusal(url, JOHN)
    assert status == expected
    return status, body


async def test_redis_restarted_empty_counts_right_within_one_renewal_interval(
        fleet, redis_server, peek):
    proxies = await fleet(3, "--limits-renew-seconds", "1", "--limits-lease-seconds", "5",
                          limits={"maxConnectionsPerConsumer": 3})
    live = [await session(proxies.url(i), JOHN) for i in range(3)]
    redis_server.restart()
    restarted = time.monotonic()
    await eventually(lambda: _equal(peek.zcard(PER_CONSUMER), 3), timeout=10, interval=0.05)
    assert time.monotonic() - restarted < 1 + 1.0  # one interval (+ one retry after an error)
    for i in range(3):
        assert (await refusal(proxies.url(i), JOHN))[0] == 429
    for ws in live:
        await ws.close()


async def test_a_long_session_keeps_counting_past_many_lease_periods(fleet):
    proxies = await fleet(2, "--limits-lease-seconds", "1", "--limits-renew-seconds", "0.25",
                          limits={"maxConnectionsPerConsumer": 1})
    long_lived = await session(proxies.url(0), JOHN)
    await eventually(lambda: _renewals_at_least(proxies, 0, 16), timeout=15)  # >= 4 leases
    assert (await refusal(proxies.url(1), JOHN))[0] == 429
    await long_lived.send("still")
    assert await long_lived.recv() == "still"
    await long_lived.close()


async def _renewals_at_least(proxies: Fleet, i: int, count: int) -> None:
    metrics = await proxies.admin(i).metrics()
    assert metric_value(metrics, "wsgate_limits_store_seconds_count", operation="renew") >= count


async def test_editing_a_route_keeps_its_counts(fleet):
    proxies = await fleet(limits={"maxConnectionsPerConsumer": 2})
    live = [await session(proxies.url(0), JOHN), await session(proxies.url(1), JOHN)]
    route = route_of(proxies.objects)
    route["spec"]["backend"]["retries"] = 2  # any other field
    route["spec"]["limits"]["idleTimeoutSeconds"] = 300
    route["spec"]["paths"].append({"type": "Exact", "value": "/other"})
    await proxies.push()
    assert (await refusal(proxies.url(2), JOHN))[0] == 429
    route["spec"]["limits"]["maxConnectionsPerConsumer"] = 3  # the limit itself
    await proxies.push()
    live.append(await session(proxies.url(2, "/other"), JOHN))
    assert (await refusal(proxies.url(0), JOHN))[0] == 429
    for ws in live:
        await ws.close()


async def test_a_redis_that_never_answers_does_not_stall_handshakes(fleet):
    async with SilentServer() as silent:
        proxies = await fleet(1, "--limits-redis-timeout", "0.3", url=silent.url,
                              limits={"maxConnectionsPerConsumer": 2})
        started = time.monotonic()
        first = await session(proxies.url(0), JOHN)  # waited at most the timeout
        assert time.monotonic() - started < 0.3 + 1.0
        started = time.monotonic()
        second = await session(proxies.url(0), JOHN)  # the store is known down: no wait
        assert time.monotonic() - started < 0.3
        assert (await refusal(proxies.url(0), JOHN))[0] == 429  # per proxy meanwhile
        unlimited = await session(proxies.url(0, "/open"), JANE)
        for ws in (first, second, unlimited):
            await ws.close()


def test_a_proxy_refuses_limits_options_that_cannot_work(tmp_path):
    empty = tmp_path / "password"
    empty.write_text("\n")
    for args, words in [
        (("--limits-redis-url", "http://redis:6379"), "redis://HOST:PORT/DB"),
        (("--limits-redis-url", "redis://r", "--limits-renew-seconds", "20"), "at most half"),
        (("--limits-redis-url", "redis://r", "--limits-redis-password-file", str(empty)),
         "is empty"),
        (("--limits-redis-password-file", str(empty)), "needs --limits-redis-url"),
    ]:
        proc = WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen",
                             "127.0.0.1:0", *args)
        with pytest.raises(ProcessFailed, match=words):
            proc.start(timeout=10)
        proc.stop()


async def test_without_a_store_each_proxy_counts_its_own(serve):
    served = await serve()  # no --limits-redis-url
    served.find("WsConsumer", "john")["spec"]["limits"] = {"maxConnections": 1}
    await served.push()
    first = await session(served.url, JOHN)
    status, body = await refusal(served.url, JOHN)
    assert status == 429
    assert "on this proxy" in body
    status, summary = await served.admin.request("GET", "/config")
    assert "limitsStore" not in summary
    await first.close()
    again: list = []
    await eventually(lambda: _admitted(served.url, JOHN, again))
    await again[0].close()
