"""Route limits and allowed origins, enforced by a real proxy process."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import KEY, consumer_objects, eventually, receive_until_closed


@pytest.fixture
def route_proxy(serve):
    """A proxy whose quickstart route has these extra spec fields, and a second consumer."""
    async def start(**spec):
        return (await serve(*consumer_objects("jane", "jane-key"), **spec)).url
    return start


async def status_of(url, **kwargs) -> int:
    try:
        async with connect(url, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_max_connections_is_503_until_one_ends(route_proxy):
    url = await route_proxy(limits={"maxConnections": 2})
    first = await connect(url, additional_headers=KEY)
    second = await connect(url, additional_headers={"apikey": "jane-key"})
    assert await status_of(url, additional_headers=KEY) == 503
    await first.close()
    await eventually(lambda: _expect(status_of(url, additional_headers=KEY), 101))
    await second.close()


async def test_max_connections_per_consumer_is_429(route_proxy):
    url = await route_proxy(limits={"maxConnectionsPerConsumer": 1})
    async with connect(url, additional_headers=KEY):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers=KEY):
                pass
        assert info.value.response.status_code == 429
        assert b"limit" in info.value.response.body
        assert await status_of(url, additional_headers={"apikey": "jane-key"}) == 101


async def _expect(awaitable, expected):
    assert await awaitable == expected


async def test_refused_handshakes_do_not_use_up_the_limit(route_proxy):
    url = await route_proxy(limits={"maxConnections": 1},
                            backend={"service": {"name": "echo", "port": 8080}, "retries": 0})
    for _ in range(5):
        assert await status_of(url) == 401
    async with connect(url, additional_headers=KEY) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"


async def test_message_over_the_limit_closes_both_sides_with_1009(route_proxy, upstream):
    url = await route_proxy(limits={"maxMessageBytes": 1000})
    async with connect(url, additional_headers=KEY, compression=None) as ws:
        await ws.send("a" * 1000)  # at the limit: fine
        assert await ws.recv() == "a" * 1000
        await ws.send("b" * 1001)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (1009, "message too big")
    await eventually(lambda: _expect(_now(upstream.close_codes), [1009]))


async def _now(value):
    return value


async def test_upstream_message_over_the_limit_closes_with_1009(route_proxy):
    url = await route_proxy(limits={"maxMessageBytes": 1000})
    async with connect(url, additional_headers=KEY, compression=None) as ws:
        await ws.send("flood:1")  # 64 KiB messages from the upstream
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1009


async def test_idle_sessions_are_closed_with_1001(route_proxy):
    url = await route_proxy(limits={"idleTimeoutSeconds": 0.5})
    idle = await connect(url, additional_headers=KEY, ping_interval=None)
    busy = await connect(url, additional_headers=KEY, ping_interval=None)
    started = time.monotonic()
    while time.monotonic() - started < 1.6:
        await busy.send("tick")
        assert await busy.recv() == "tick"
        await asyncio.sleep(0.1)
    await asyncio.wait_for(idle.wait_closed(), 5)
    assert (idle.close_code, idle.close_reason) == (1001, "idle timeout")
    assert busy.close_code is None  # kept alive by its traffic
    await busy.close()


async def test_messages_beyond_the_rate_close_with_1008(route_proxy, upstream):
    url = await route_proxy(limits={"messagesPerSecond": 5})
    async with connect(url, additional_headers=KEY) as ws:
        for i in range(20):
            await ws.send(f"m{i}")
        with pytest.raises(ConnectionClosed):
            await receive_until_closed(ws)
    assert (ws.close_code, ws.close_reason) == (1008, "message rate exceeded")
    await eventually(lambda: _expect(_now(upstream.close_codes), [1008]))


async def test_allowed_origins(route_proxy):
    url = await route_proxy(allowedOrigins=["https://app.example.com"])
    assert await status_of(url, additional_headers=KEY, origin="https://app.example.com") == 101
    assert await status_of(url, additional_headers=KEY, origin="https://APP.example.com") == 101
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=KEY, origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403
    assert b"origin 'https://evil.example' is not allowed" in info.value.response.body
    assert await status_of(url, additional_headers=KEY) == 403  # no Origin at all
