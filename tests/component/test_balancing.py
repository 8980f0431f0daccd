"""Load balancing through a real proxy onto the two `wsgate echo` upstreams."""

from __future__ import annotations

import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import (
    Admin,
    compile_objects,
    consumer_objects,
    endpoint_slice,
    quickstart_objects,
)

KEY = {"apikey": "john-key"}


@pytest.fixture
def balanced(start_proxy, echo_a, echo_b):
    async def start(slices=None, **backend):
        objects = quickstart_objects(echo_a.port, echo_b.port) + consumer_objects("jane", "k2")
        if slices is not None:
            objects = [o for o in objects if o["kind"] != "EndpointSlice"] + slices
        next(o for o in objects if o["kind"] == "WsRoute")["spec"]["backend"].update(backend)
        proxy = start_proxy()
        status, body = await Admin(proxy.admin_port).put_config(compile_objects(objects))
        assert status == 200, body
        return f"ws://127.0.0.1:{proxy.port}/.ws"
    return start


async def served_by(url, headers=KEY) -> str:
    async with connect(url, additional_headers=headers) as ws:
        return (await ws.recv()).removeprefix("Request served by ")


async def test_least_connections_fills_the_emptier_upstream(balanced):
    url = await balanced(loadBalancing={"algorithm": "LeastConnections"})
    held = [await connect(url, additional_headers=KEY) for _ in range(3)]
    names = [(await ws.recv()).removeprefix("Request served by ") for ws in held]
    assert sorted(names) in (["a", "a", "b"], ["a", "b", "b"])
    busier = max(set(names), key=names.count)
    for ws, name in zip(held, names, strict=True):
        if name == busier:
            await ws.close()
    # Now the busier one holds nothing and the other one session: the next goes to it.
    assert await served_by(url) == busier
    for ws in held:
        await ws.close()


async def test_consistent_hash_on_a_header_keeps_a_room_on_one_upstream(balanced):
    url = await balanced(loadBalancing={"algorithm": "ConsistentHash", "hashOn": "Header",
                                        "header": "x-room"})
    for room in ("lobby", "games", "chat"):
        names = {await served_by(url, {**KEY, "x-room": room}) for _ in range(4)}
        assert len(names) == 1, room
    spread = {await served_by(url, {**KEY, "x-room": f"room-{i}"}) for i in range(20)}
    assert spread == {"a", "b"}


async def test_consistent_hash_on_the_consumer(balanced):
    url = await balanced(loadBalancing={"algorithm": "ConsistentHash", "hashOn": "Consumer"})
    assert len({await served_by(url) for _ in range(4)}) == 1
    assert len({await served_by(url, {"apikey": "k2"}) for _ in range(4)}) == 1


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_failing_endpoint_is_passed_over_for_a_while(balanced, echo_a):
    slices = [endpoint_slice("dead", "echo", "127.0.0.1", dead_port()),
              endpoint_slice("live", "echo", "127.0.0.1", echo_a.port)]
    url = await balanced(slices=slices, retries=0)
    outcomes = []
    for _ in range(8):
        try:
            outcomes.append(await served_by(url))
        except InvalidStatus as exc:
            outcomes.append(exc.response.status_code)
    # Round robin alone would fail every other handshake; after one failure, the dead
    # endpoint is avoided (1 s, then longer).
    assert outcomes.count(502) <= 1
    assert outcomes.count("a") >= 7
