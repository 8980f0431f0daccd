"""Bad input and hard stops cost nothing beyond the session they concern."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import KEY, Admin, eventually, objects_for, rss_kib

HANDSHAKE = (b"GET /.ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"apikey: john-key\r\n")


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()


@pytest.fixture
async def proxy(serve):
    return (await serve()).proxy


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"Sec-WebSocket-Version: 13\r\n", b"400"),  # no key
        (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n", b"400"),
        (b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"426"),
        (b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         b"X-Big: " + b"a" * 20000 + b"\r\n", b"400"),
    ],
)
async def test_malformed_handshakes_get_a_clear_status(proxy, upstream, extra, status):
    answer = await raw_request(proxy.port, HANDSHAKE + extra + b"\r\n")
    assert answer[:5] == b"HTTP/"
    assert answer[9:12] == status
    assert upstream.requests == []  # nothing reached the upstream
    async with connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY) as ws:
        await ws.send("others are served")
        assert await ws.recv() == "others are served"


async def test_garbage_instead_of_http_is_refused(proxy):
    answer = await raw_request(proxy.port, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 4)
    assert answer[9:12] == b"400"


async def test_shutdown_closes_sessions_with_1001_on_both_sides(proxy, upstream):
    ws = await connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY)
    await ws.send("x")
    await ws.recv()
    assert await asyncio.to_thread(proxy.stop) == 0  # the loop stays free to answer the close
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert (ws.close_code, ws.close_reason) == (1001, "proxy shutting down")
    await eventually(lambda: _equal(upstream.close_codes, [1001]))


async def _equal(actual, expected):
    assert actual == expected


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc for memory")
async def test_a_client_that_does_not_read_does_not_make_the_proxy_buffer(proxy):
    # max_queue=1: the client stops reading from its socket once one message waits.
    slow = await connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY,
                         max_queue=1, max_size=None)
    before = rss_kib(proxy.proc.pid)
    await slow.send("flood:64")  # 64 MiB towards a client that reads nothing
    await asyncio.sleep(1.5)  # let the flood fill every buffer it can
    grown = rss_kib(proxy.proc.pid) - before
    assert grown < 16 * 1024, f"proxy grew by {grown} KiB for one stalled reader"
    # Others are served meanwhile.
    async with connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY) as ws:
        await ws.send("fine")
        assert await ws.recv() == "fine"
    # And the slow client gets all of it once it reads.
    received = 0
    while received < 64 * 1024 * 1024:
        message = await asyncio.wait_for(slow.recv(), 10)
        received += len(message)
    assert received == 64 * 1024 * 1024
    await slow.close()


async def test_client_vanishing_mid_session_closes_the_upstream(proxy, upstream):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(HANDSHAKE + b"Sec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.transport.abort()
    await eventually(lambda: _equal(len(upstream.close_codes), 1))
    assert upstream.close_codes[0] == 1006  # the upstream saw the TCP connection end


async def test_upstream_that_never_answers_the_handshake_times_out(serve):
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = {"service": {"name": "echo", "port": 8080}, "connectTimeoutSeconds": 0.5,
               "retries": 0}
    proc = (await serve(objects=objects_for(port), backend=backend)).proxy
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{proc.port}/.ws", additional_headers=KEY):
                pass
        assert info.value.response.status_code == 502
        assert b"did not answer the handshake within 0.5s" in info.value.response.body
    finally:
        server.close()


async def test_sessions_closing_do_not_leak(proxy, upstream):
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    for _ in range(50):
        async with connect(url, additional_headers=KEY) as ws:
            await ws.send("x")
            await ws.recv()
    admin = Admin(proxy.admin_port)

    async def no_sessions():
        _, body = await admin.request("GET", "/config")
        assert body["sessions"] == 0

    await eventually(no_sessions)
    async with connect(url, additional_headers=KEY) as ws:
        await ws.send("close:4002")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    await eventually(no_sessions)
