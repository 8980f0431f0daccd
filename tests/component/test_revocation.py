"""Live revocation: a new config closes the sessions it no longer allows, and only those."""

from __future__ import annotations

import asyncio
import copy

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import consumer_objects, receive_until_closed


@pytest.fixture
async def cluster(serve):
    """A proxy serving john and jane; the test changes the objects and pushes them."""
    return await serve(*consumer_objects("jane", "jane-key"))


async def session(url: str, key: str):
    ws = await connect(url, additional_headers={"apikey": key})
    await ws.send("hello")
    assert await ws.recv() == "hello"
    return ws


async def closed_with(ws, code: int, reason: str) -> None:
    await asyncio.wait_for(ws.wait_closed(), 1.0)  # "within one second"
    assert (ws.close_code, ws.close_reason) == (code, reason)


async def still_open(ws) -> None:
    await ws.send("still here")
    assert await ws.recv() == "still here"


async def refused(url: str, key: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers={"apikey": key}):
            pass
    return info.value.response.status_code


async def test_key_rotation_closes_sessions_on_the_old_key(cluster):
    john, jane = await session(cluster.url, "john-key"), await session(cluster.url, "jane-key")
    cluster.find("Secret", "john-key")["stringData"]["key"] = "john-key-2"
    await cluster.push()
    await closed_with(john, 1008, "credential revoked")
    await still_open(jane)
    assert await refused(cluster.url, "john-key") == 401
    await (await session(cluster.url, "john-key-2")).close()
    await jane.close()


@pytest.mark.parametrize("change", ["delete", "disable", "not allowed"])
async def test_consumer_gone_closes_its_sessions_only(cluster, change):
    john, jane = await session(cluster.url, "john-key"), await session(cluster.url, "jane-key")
    if change == "delete":
        cluster.objects.remove(cluster.find("WsConsumer", "jane"))
    elif change == "disable":
        cluster.find("WsConsumer", "jane")["spec"]["disabled"] = True
    else:
        cluster.find("WsRoute", "echo")["spec"]["auth"]["allowedConsumers"] = {"names": ["john"]}
    await cluster.push()
    await closed_with(jane, 1008, "credential revoked")
    await still_open(john)
    await john.close()


async def test_on_credential_revoked_keep_leaves_sessions_open(cluster):
    cluster.find("WsRoute", "echo")["spec"]["onCredentialRevoked"] = "Keep"
    await cluster.push()
    jane = await session(cluster.url, "jane-key")
    cluster.objects.remove(cluster.find("WsConsumer", "jane"))
    await cluster.push()
    await still_open(jane)
    assert await refused(cluster.url, "jane-key") == 401  # new handshakes are refused
    await jane.close()


async def test_deleted_route_closes_its_sessions_with_1001(cluster):
    john = await session(cluster.url, "john-key")
    cluster.objects.remove(cluster.find("WsRoute", "echo"))
    await cluster.push()
    await closed_with(john, 1001, "route removed")


async def test_route_no_longer_matching_closes_with_1001(cluster):
    john = await session(cluster.url, "john-key")
    cluster.find("WsRoute", "echo")["spec"]["paths"] = [{"type": "Prefix", "value": "/v2"}]
    await cluster.push()
    await closed_with(john, 1001, "route removed")


async def test_route_changes_that_still_match_keep_sessions(cluster):
    john = await session(cluster.url, "john-key")
    spec = cluster.find("WsRoute", "echo")["spec"]
    spec["paths"].append({"type": "Exact", "value": "/other"})
    spec["limits"] = {"maxConnections": 100}
    await cluster.push()
    await still_open(john)
    await john.close()


async def test_a_hundred_unrelated_pushes_keep_two_hundred_sessions(cluster):
    keys = ["john-key", "jane-key"]
    sessions = await asyncio.gather(*(session(cluster.url, keys[i % 2]) for i in range(200)))
    base = copy.deepcopy(cluster.objects)
    try:
        for i in range(100):
            cluster.objects = base + consumer_objects(f"extra-{i}", f"extra-key-{i}")
            await cluster.push()
        for ws in sessions:
            assert ws.close_code is None
        await asyncio.gather(*(still_open(ws) for ws in sessions))
    finally:
        await asyncio.gather(*(ws.close() for ws in sessions))


async def test_revoked_session_mid_message_is_closed_at_a_frame_boundary(cluster):
    jane = await connect(cluster.url, additional_headers={"apikey": "jane-key"},
                         max_size=None, compression=None)
    await jane.send("flood:4")  # 4 MiB from the upstream in 64 KiB frames while we revoke
    first = await jane.recv()
    cluster.objects.remove(cluster.find("WsConsumer", "jane"))
    await cluster.push()
    received: list[bytes] = []
    with pytest.raises(ConnectionClosed):
        await receive_until_closed(jane, received)
    assert (jane.close_code, jane.close_reason) == (1008, "credential revoked")
    # Every message arrived whole (the close frame came at a frame boundary).
    assert all(len(message) == len(first) for message in received)
