"""Route features end to end: key sources, public routes, rewrites, failing upstreams,
and the metrics a session leaves behind."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import KEY, endpoint_slice, eventually, metric_value, objects_for


async def test_key_in_a_cookie_is_stripped_from_the_cookie_header(serve, upstream):
    base = (await serve(auth={"methods": ["KeyAuth"], "keyAuth": {"cookie": "session"}})).base
    cookies = {"Cookie": "theme=dark; session=john-key; lang=en"}
    async with connect(base + "/.ws", additional_headers=cookies) as ws:
        await ws.send("x")
        await ws.recv()
    assert upstream.requests[-1].headers["Cookie"] == "theme=dark; lang=en"


async def test_a_switched_off_source_is_not_read(serve):
    base = (await serve(auth={"methods": ["KeyAuth"], "keyAuth": {"query": ""}})).base
    with pytest.raises(InvalidStatus) as info:
        async with connect(base + "/.ws?apikey=john-key"):
            pass
    assert info.value.response.status_code == 401


async def test_public_route_needs_no_credential_and_names_no_consumer(serve, upstream):
    base = (await serve(auth={"mode": "None"})).base
    async with connect(base + "/.ws") as ws:
        await ws.send("public")
        assert await ws.recv() == "public"
    assert "X-Consumer-Username" not in upstream.requests[-1].headers


async def test_backend_path_rewrites_the_matched_prefix(serve, upstream):
    base = (await serve(backend={"service": {"name": "echo", "port": 8080},
                                 "path": "/internal/socket"})).base
    async with connect(base + "/.ws/rooms/7?x=1", additional_headers=KEY) as ws:
        await ws.send("x")
        await ws.recv()
    assert upstream.requests[-1].path == "/internal/socket/rooms/7?x=1"


async def test_an_upstream_answering_5xx_moves_on_to_the_next(serve, upstream):
    async def busy(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    busy_port = server.sockets[0].getsockname()[1]
    objects = [o for o in objects_for(upstream.port) if o["kind"] != "EndpointSlice"] + [
        endpoint_slice("busy", "echo", "127.0.0.1", busy_port),
        endpoint_slice("good", "echo", "127.0.0.1", upstream.port)]
    try:
        base = (await serve(objects=objects)).base
        for _ in range(4):  # whichever comes first, every handshake lands on the good one
            async with connect(base + "/.ws", additional_headers=KEY) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
    finally:
        server.close()


async def test_session_metrics_bytes_messages_and_close_reasons(serve):
    served = await serve(limits={"idleTimeoutSeconds": 0.3})
    base, admin = served.base, served.admin
    async with connect(base + "/.ws", additional_headers=KEY, compression=None) as ws:
        for _ in range(3):
            await ws.send("12345")
            await ws.recv()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)  # idle: closed by the proxy

    async def counted():
        text = await admin.metrics()
        route = "default/echo"
        assert metric_value(text, "wsgate_relayed_messages_total", route=route,
                            direction="client_to_upstream") == 3
        assert metric_value(text, "wsgate_relayed_messages_total", route=route,
                            direction="upstream_to_client") == 3
        assert metric_value(text, "wsgate_relayed_bytes_total", route=route,
                            direction="client_to_upstream") >= 3 * (5 + 6)
        assert metric_value(text, "wsgate_sessions_closed_total", route=route,
                            closed_by="proxy", code="1001", reason="idle timeout") == 1
        assert metric_value(text, "wsgate_sessions_active", route=route) == 0

    await eventually(counted)
