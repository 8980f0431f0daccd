"""What crosses the proxy: headers to the upstream, close codes both ways, failing
upstreams, and sessions across config swaps. The upstream is the `websockets`
library's server, recording what it receives."""

from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import (
    KEY,
    RecordingUpstream,
    compile_objects,
    consumer_objects,
    eventually,
    objects_for,
    rss_kib,
)
from wsgate_proxy.credentials import encode_key_subprotocol


async def test_upstream_gets_identity_and_forwarding_headers_not_the_key(upstream, serve):
    url = (await serve()).url
    headers = {**KEY, "X-Consumer-Username": "mallory", "X-Custom": "kept"}
    async with connect(url + "/room?apikey=other&x=1", additional_headers=headers) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
    request = upstream.requests[-1]
    assert request.headers["X-Consumer-Username"] == "john"  # the client's value is replaced
    assert request.headers.get_all("X-Consumer-Username") == ["john"]
    assert request.headers["X-Forwarded-For"] == "127.0.0.1"
    assert request.headers["X-Forwarded-Proto"] == "http"
    assert request.headers["X-Forwarded-Host"].startswith("127.0.0.1:")
    assert request.headers["X-Custom"] == "kept"
    assert "apikey" not in request.headers
    # Every place the route reads a key from is stripped, not only the one that
    # authenticated (the header here): a second credential never rides along.
    assert request.path == "/.ws/room?x=1"


async def test_query_key_is_stripped_and_other_parameters_kept(upstream, serve):
    url = (await serve()).url
    async with connect(url + "?room=7&apikey=john-key&b=%20x") as ws:
        await ws.send("x")
        await ws.recv()
    assert upstream.requests[-1].path == "/.ws?room=7&b=%20x"


async def test_subprotocol_key_entry_is_never_forwarded(upstream, serve):
    url = (await serve()).url
    entry = encode_key_subprotocol("john-key")
    async with connect(url, subprotocols=[entry, "echo"]) as ws:
        assert ws.subprotocol == "echo"
    offered = upstream.requests[-1].headers.get_all("Sec-WebSocket-Protocol")
    assert offered == ["echo"]
    async with connect(url, subprotocols=[entry]) as ws:
        assert ws.subprotocol == entry
    assert "Sec-WebSocket-Protocol" not in upstream.requests[-1].headers


async def test_encoded_paths_are_normalized_before_matching_and_forwarding(upstream, serve):
    base = (await serve()).base
    async with connect(base + "/%2Ews/a/../b", additional_headers=KEY) as ws:
        await ws.send("x")
        await ws.recv()
    assert upstream.requests[-1].path == "/.ws/b"
    with pytest.raises(InvalidStatus) as info:
        async with connect(base + "/x/..%2F.ws", additional_headers=KEY):
            pass
    assert info.value.response.status_code == 400


async def test_client_close_code_reaches_the_upstream(upstream, serve):
    url = (await serve()).url
    async with connect(url, additional_headers=KEY) as ws:
        await ws.send("x")
        await ws.recv()
        await ws.close(4000, "client says bye")
    await eventually(lambda: _assert_equal(upstream.close_codes, [4000]))


async def test_upstream_close_code_reaches_the_client(upstream, serve):
    url = (await serve()).url
    async with connect(url, additional_headers=KEY) as ws:
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4001
    assert ws.close_reason == "upstream says bye"


async def _assert_equal(actual, expected):
    assert actual == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_upstream_down_is_502_before_any_upgrade(serve):
    url = (await serve(objects=objects_for(free_port()))).url
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=KEY):
            pass
    assert info.value.response.status_code == 502
    assert b"cannot connect" in info.value.response.body


async def test_a_dead_endpoint_is_retried_on_the_next(upstream, serve):
    url = (await serve(objects=objects_for(free_port(), upstream.port))).url
    for _ in range(4):  # round robin starts on either: every handshake must land
        async with connect(url, additional_headers=KEY) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"


async def test_no_ready_endpoints_is_503(serve):
    url = (await serve(objects=objects_for())).url
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=KEY):
            pass
    assert info.value.response.status_code == 503
    assert b"no ready endpoints" in info.value.response.body


async def test_upstream_vanishing_mid_session_closes_the_client_with_1014(serve):
    async with RecordingUpstream() as server:
        url = (await serve(objects=objects_for(server.port))).url
        ws = await connect(url, additional_headers=KEY)
        await ws.send("x")
        await ws.recv()
        # Cut the upstream's TCP connections without a close frame.
        for connection in list(server._server.connections):
            connection.transport.abort()
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1014
    assert ws.close_reason == "upstream connection lost"


async def test_config_swaps_keep_live_sessions(upstream, serve):
    served = await serve()
    url, admin = served.url, served.admin
    sessions = [await connect(url, additional_headers=KEY) for _ in range(20)]
    try:
        for i in range(10):
            objects = objects_for(upstream.port) + consumer_objects(f"c{i}", f"key-{i}")
            status, body = await admin.put_config(compile_objects(objects))
            assert (status, body["changed"]) == (200, True)
        for i, ws in enumerate(sessions):
            await ws.send(f"still here {i}")
            assert await ws.recv() == f"still here {i}"
        # And the last config is in force for new handshakes.
        async with connect(url, additional_headers={"apikey": "key-9"}) as ws:
            await ws.send("new")
            assert await ws.recv() == "new"
    finally:
        for ws in sessions:
            await ws.close()


IDLE = 300
# Resident memory an idle session may cost the proxy. It was about 20 KiB while each
# session kept aiohttp's request, parser and handler tasks alive (nginx 1.22: about
# 17 KiB); bench/relay.py measures it against nginx.
IDLE_SESSION_KIB = 12


async def test_idle_sessions_hold_little_memory(serve):
    served = await serve()
    pid = served.proxy.proc.pid
    async with connect(served.url, additional_headers=KEY) as ws:  # pools, first imports
        await ws.send("warm")
        await ws.recv()
    before = rss_kib(pid)
    sessions = [await connect(served.url, additional_headers=KEY) for _ in range(IDLE)]
    try:
        async def all_live():
            _, body = await served.admin.request("GET", "/config")
            assert body["sessions"] == IDLE

        await eventually(all_live)
        per_session = (rss_kib(pid) - before) / IDLE
        assert per_session < IDLE_SESSION_KIB, f"{per_session:.1f} KiB per idle session"
        await sessions[-1].send("still relayed")
        assert await sessions[-1].recv() == "still relayed"
    finally:
        await asyncio.gather(*(ws.close() for ws in sessions))
