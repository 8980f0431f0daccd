"""The shared limits store against a real redis-server, several stores standing in for
several proxies; and against peers that hang or answer garbage."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from tests.redis_server import RedisServer, SilentServer
from tests.support import eventually
from wsgate_proxy.leases import (
    Counter,
    Full,
    LeaseStore,
    StoreOptions,
    StoreUnavailable,
    proxies_key,
)

# Serial: asserts renewals, retries and timeouts within tenths of a second.
pytestmark = pytest.mark.serial

JOHN = [Counter.route("default", "echo", 100),
        Counter.route_consumer("default", "echo", "default/john", 3)]


@pytest.fixture
async def stores(redis_server):
    """make(**options) -> a store on the test's Redis (or ``url``); all closed after."""
    made: list[LeaseStore] = []
    tasks: list[asyncio.Task] = []

    def make(url: str | None = None, run: bool = False, **options) -> LeaseStore:
        store = LeaseStore(StoreOptions(url or redis_server.url, **options))
        made.append(store)
        if run:
            tasks.append(asyncio.create_task(store.run()))
        return store

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for store in made:
        await store.close()


@pytest.fixture
async def peek(redis_server):
    """An independent client on the test's Redis."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def _admitted(store: LeaseStore, counters):
    return await store.admit(counters)


async def _equal(awaitable, expected):
    assert await awaitable == expected


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_limit_counts_the_sessions_of_every_store(stores):
    a, b, c = stores(), stores(), stores()
    leases = [await a.admit(JOHN), await b.admit(JOHN), await c.admit(JOHN)]
    for store in (a, b, c):
        with pytest.raises(Full) as info:
            await store.admit(JOHN)
        assert (info.value.counter, info.value.count) == (JOHN[1], 3)
    b.release(leases[1])  # sent without waiting; the next admission anywhere sees it
    await eventually(lambda: _admitted(c, JOHN))
    with pytest.raises(Full):
        await a.admit(JOHN)


async def test_admission_is_all_or_nothing(stores, peek):
    a = stores()
    counters = [Counter.route("default", "echo", 10),
                Counter.route_consumer("default", "echo", "default/john", 1)]
    await a.admit(counters)
    with pytest.raises(Full) as info:
        await a.admit(counters)
    assert info.value.counter == counters[1]
    assert await peek.zcard(counters[0].key) == 1  # the refused one added nothing anywhere
    jane = [counters[0], Counter.route_consumer("default", "echo", "default/jane", 1)]
    await a.admit(jane)
    assert await peek.zcard(counters[0].key) == 2


def test_keys_share_the_namespace_hash_tag_and_carry_no_version():
    keys = [Counter.route("team-a", "chat", 5).key,
            Counter.route_consumer("team-a", "chat", "team-a/john", 3).key,
            Counter.consumer("team-a", "team-a/john", 7).key]
    assert keys == ["wsgate:{team-a}:route:chat", "wsgate:{team-a}:route-consumer:chat:team-a/john",
                    "wsgate:{team-a}:consumer:team-a/john"]
    # Redis Cluster hashes what is between the first '{' and the next '}'.
    assert {k[k.index("{") + 1:k.index("}")] for k in keys} == {"team-a"}
    # A limit changed by an edit is the same counter.
    assert Counter.route("team-a", "chat", 50).key == keys[0]


async def test_the_leases_of_a_proxy_that_stops_renewing_stop_counting(stores, peek):
    dead = stores(lease_seconds=0.6, renew_seconds=0.2)  # never renews: a killed proxy
    alive = stores()
    counters = [Counter.route("default", "echo", 1)]
    await dead.admit(counters)
    with pytest.raises(Full):
        await alive.admit(counters)
    started = time.monotonic()
    lease = await eventually(lambda: _admitted(alive, counters), timeout=5)
    assert time.monotonic() - started < 2
    # The dead proxy's member was removed when the script met it.
    assert await peek.zrange(counters[0].key, 0, -1) == [lease.member]


async def test_a_proxy_that_stops_cleanly_stops_counting_at_once(stores):
    leaving, staying = stores(), stores()
    counters = [Counter.route("default", "echo", 1)]
    await leaving.admit(counters)
    await leaving.close()  # its sessions have ended, or were cut
    await staying.admit(counters)


async def test_members_of_unknown_proxies_never_count(stores, peek):
    store = stores()
    counters = [Counter.route("default", "echo", 2)]
    await peek.zadd(counters[0].key, {b"0123456789abcdef/1": 0, b"zz": 0, b"": 0})
    await store.admit(counters)
    await store.admit(counters)
    assert await peek.zcard(counters[0].key) == 2


async def test_renewal_keeps_leases_past_many_lease_periods(stores, peek):
    holder = stores(lease_seconds=0.6, renew_seconds=0.2, run=True)
    other = stores()
    counters = [Counter.route("default", "echo", 1)]
    await holder.admit(counters)
    first = await peek.zscore(proxies_key("default"), holder.proxy_id)
    await eventually(lambda: _at_least(holder, "renewals", 12), timeout=10)  # >= 2.4 s
    with pytest.raises(Full):
        await other.admit(counters)
    assert await peek.zscore(proxies_key("default"), holder.proxy_id) > first + 1500
    # The set goes away with the last heartbeat in it (the other store: 30 s), 1 ms after
    # it (PEXPIREAT ceil(heartbeat) + 1), so up to 2 ms more than the lease.
    assert 0 < await peek.pttl(proxies_key("default")) <= 30_002


async def _at_least(store, attribute, value):
    assert getattr(store, attribute) >= value


async def test_renewal_costs_one_call_per_namespace_not_per_session(stores, peek):
    store = stores()
    for i in range(1200):
        namespace = f"team-{i % 3}"
        await store.admit([Counter.route(namespace, "echo", 10_000),
                           Counter.route_consumer(namespace, "echo", f"{namespace}/c{i}", 5)])
    await store.renew()  # the first loads the script
    before = await _script_calls(peek)
    await store.renew()
    assert store.up
    assert await _script_calls(peek) - before == 3  # one heartbeat per namespace
    assert await peek.zcard(Counter.route("team-1", "echo", 1).key) == 400


async def _script_calls(client) -> int:
    stats = await client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


async def test_releases_racing_renewals_leave_nothing_behind(stores, peek):
    store = stores(lease_seconds=30, renew_seconds=0.05, run=True)
    counters = [Counter.route("default", "echo", 10_000)]
    leases = [await store.admit(counters) for _ in range(300)]
    for i, lease in enumerate(leases):
        store.release(lease)
        if i % 7 == 0:
            await asyncio.sleep(0.003)  # renewals interleave with the releases
    renewals = store.renewals
    await eventually(lambda: _at_least(store, "renewals", renewals + 3))
    await eventually(lambda: _equal(peek.zcard(counters[0].key), 0))


async def test_redis_restarted_empty_gets_every_lease_back_within_one_interval(
        redis_server, stores, peek):
    store = stores(lease_seconds=3, renew_seconds=0.5, run=True)
    other = stores()
    counters = [Counter.route("default", "echo", 2)]
    await store.admit(counters)
    await store.admit(counters)
    before = _sample("wsgate_limits_store_reregistered_total")
    redis_server.restart()
    started = time.monotonic()
    await eventually(lambda: _equal(peek.zcard(counters[0].key), 2), timeout=5)
    assert time.monotonic() - started < 0.5 + 1.0  # one interval (+ one retry after an error)
    assert _sample("wsgate_limits_store_reregistered_total") >= before + 2
    with pytest.raises(Full):
        await other.admit(counters)


async def test_an_outage_is_reported_once_and_recovery_registers_what_happened_meanwhile(
        redis_server, stores, peek, caplog):
    caplog.set_level(logging.INFO, logger="wsgate.limits")
    store = stores(lease_seconds=5, renew_seconds=0.3, timeout_seconds=0.2, run=True)
    counters = [Counter.route("default", "echo", 100)]
    kept, gone = await store.admit(counters), await store.admit(counters)
    outages = _sample("wsgate_limits_store_outages_total")
    redis_server.pause()  # accepts connections, answers nothing
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.admit(counters)
    assert time.monotonic() - started < 0.2 + 0.3  # the timeout bounds the handshake
    store.hold(info.value.lease)  # admitted without the store (failure mode open)
    store.release(gone)  # a session ends during the outage
    for _ in range(20):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.admit(counters)
        assert time.monotonic() - started < 0.01  # not even tried while down
    assert not store.up
    store_label = redis_server.url.split("?")[0]
    assert _sample("wsgate_limits_store_up", store=store_label) == 0
    assert _sample("wsgate_limits_store_outages_total") == outages + 1
    down = [r for r in caplog.records if r.getMessage() == "limits store unavailable"]
    assert len(down) == 1
    assert down[0].store == store_label

    redis_server.resume()
    await eventually(lambda: _at_least(store, "up", True), timeout=5)
    # The store held two members before the outage too (kept and gone): what recovery
    # registers is the set, gone replaced by the lease admitted meanwhile.
    expected = {kept.member, info.value.lease.member}

    async def registered() -> None:
        assert set(await peek.zrange(counters[0].key, 0, -1)) == expected

    await eventually(registered, timeout=3)
    assert _sample("wsgate_limits_store_up", store=store_label) == 1
    assert [r.getMessage() for r in caplog.records].count("limits store available again") == 1


async def test_a_store_that_never_answers_bounds_every_call(stores):
    async with SilentServer() as silent:
        store = stores(url=silent.url, timeout_seconds=0.2, renew_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.admit(JOHN)
        assert time.monotonic() - started < 0.2 + 0.3
        started = time.monotonic()
        await store.renew()  # bounded too, and the store stays down
        assert time.monotonic() - started < 1.0 + 0.3  # a round trip of a renewal: 1 s
        assert not store.up
        assert silent.connections >= 1


@pytest.mark.parametrize("reply", [b"+OK\r\n", b"\x00\xff garbage \r\n", b"*2\r\n:7\r\n"
                                   b"$3\r\nabc\r\n", b"-ERR nonsense\r\n"])
async def test_a_store_that_answers_garbage_is_unavailable(stores, reply):
    async with SilentServer(reply=reply) as liar:
        store = stores(url=liar.url, timeout_seconds=0.2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.admit(JOHN)
        assert time.monotonic() - started < 0.5
        assert not store.up


async def test_a_key_of_another_type_makes_the_store_unavailable_saying_why(
        stores, peek, caplog):
    caplog.set_level(logging.WARNING, logger="wsgate.limits")
    await peek.set(JOHN[0].key, "someone else's")
    store = stores()
    with pytest.raises(StoreUnavailable):
        await store.admit(JOHN)
    (record,) = [r for r in caplog.records if r.getMessage() == "limits store unavailable"]
    assert "WRONGTYPE" in record.error


async def test_password_from_the_options_or_the_url():
    with RedisServer(password="s3cret pass") as server:
        right = LeaseStore(StoreOptions(server.url, password="s3cret pass"))
        in_url = LeaseStore(StoreOptions(server.url.replace("//", "//:s3cret%20pass@")))
        wrong = LeaseStore(StoreOptions(server.url, password="nope"))
        try:
            await right.admit(JOHN)
            await in_url.admit(JOHN)
            with pytest.raises(StoreUnavailable):
                await wrong.admit(JOHN)
        finally:
            for store in (right, in_url, wrong):
                await store.close()
        assert "s3cret" not in StoreOptions(server.url.replace("//", "//:s3cret@")).location


async def test_rediss_with_a_ca():
    with RedisServer(tls=True) as server:
        # A TLS handshake may outlast the default 0.25 s on a busy machine: that is not
        # what this test is about.
        store = LeaseStore(StoreOptions(server.url, timeout_seconds=2))
        untrusting = LeaseStore(StoreOptions(server.url.split("?")[0],  # system roots only
                                             timeout_seconds=2))
        try:
            await store.admit(JOHN)
            with pytest.raises(StoreUnavailable):
                await untrusting.admit(JOHN)
        finally:
            await store.close()
            await untrusting.close()


@pytest.mark.parametrize(("options", "words"), [
    ({"url": "http://redis:6379"}, "redis://"),
    ({"url": "redis://r", "lease_seconds": 10, "renew_seconds": 6}, "at most half"),
    ({"url": "redis://r", "timeout_seconds": 0}, "timeout"),
])
def test_options_that_cannot_work_are_refused(options, words):
    with pytest.raises(ValueError, match=words):
        StoreOptions(**options)


async def test_renewals_keep_held_counters_from_expiring_and_drop_dead_members(
        stores, peek, monkeypatch):
    from wsgate_proxy import leases

    store = stores()
    counters = [Counter.route("default", "echo", 100)]
    lease = await store.admit(counters)
    assert await peek.pttl(counters[0].key) > 23 * 3600 * 1000  # set when created
    await peek.pexpire(counters[0].key, 5000)
    await peek.zadd(counters[0].key, {b"fedcba9876543210/7": 0})  # a dead proxy's
    await store.renew()
    assert await peek.pttl(counters[0].key) <= 5000  # not due yet: refreshed hourly
    monkeypatch.setattr(leases, "REFRESH_SECONDS", 0.0)
    await store.renew()
    assert await peek.pttl(counters[0].key) > 23 * 3600 * 1000
    assert await peek.zrange(counters[0].key, 0, -1) == [lease.member]
