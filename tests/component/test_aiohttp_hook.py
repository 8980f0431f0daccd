"""The relay claims the bytes after a 101 through aiohttp's `protocol.set_parser`, which
is not public API (aiohttp's own WebSocketResponse uses it), then takes the transport
over and lets aiohttp's handler end without closing it (wsgate_proxy.gateway's
``_handed_over``: ``_force_close``, ``_parser``, ``_task_handler``). The minor version
is pinned in pyproject.toml; these tests fail loudly if an upgrade changes either."""

from __future__ import annotations

import asyncio
import inspect

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

UPGRADE = (b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"\r\n")


class Recorder:
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        self.eof.set_result(None)


def test_set_parser_has_the_shape_the_relay_uses():
    parameters = list(inspect.signature(RequestHandler.set_parser).parameters)
    assert parameters[:2] == ["self", "parser"], (
        "aiohttp changed RequestHandler.set_parser: the relay (wsgate_proxy.gateway) must be "
        "adapted before the aiohttp pin is moved"
    )


async def test_bytes_after_the_101_reach_the_parser_in_order():
    recorders: list[Recorder] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(status=101, headers={"Upgrade": "websocket",
                                                           "Connection": "Upgrade"})
        response.force_close()
        await response.prepare(request)
        recorder = Recorder()
        recorders.append(recorder)
        request.protocol.set_parser(recorder)  # type: ignore[arg-type]
        request.transport.write(b"raw from server")
        await recorder.eof
        return response

    runner = web.ServerRunner(web.Server(handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UPGRADE + b"sent with the request|")  # bytes pipelined behind the upgrade
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Transfer-Encoding" not in head
        assert await asyncio.wait_for(reader.readexactly(15), 5) == b"raw from server"
        writer.write(b"sent later")
        await writer.drain()
        writer.close()
        await asyncio.wait_for(recorders[0].eof, 5)
        assert bytes(recorders[0].data) == b"sent with the request|sent later"
    finally:
        await runner.cleanup()


def test_request_handler_has_the_internals_the_head_guard_reads():
    # wsgate_proxy.listener counts request-head bytes from these; a change in aiohttp
    # must be caught here, not by heads silently going unbounded again.
    from aiohttp.base_protocol import BaseProtocol

    slots = set(RequestHandler.__slots__) | set(BaseProtocol.__slots__)
    needed = {"_upgraded", "_payload_parser", "_request_count", "_request_in_progress",
              "_messages", "_force_close", "_close", "_loop", "_parser", "_task_handler"}
    assert needed <= slots, f"aiohttp changed RequestHandler: {needed - slots} are gone"


class Taker(asyncio.Protocol):
    """The protocol that takes a connection over after the 101, as the relay's does."""

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        self.handler.connection_lost(exc)  # aiohttp's bookkeeping of the connection
        self.lost.set_result(None)


async def test_a_connection_handed_over_outlives_its_handler():
    from wsgate_proxy.gateway import _handed_over

    takers: list[Taker] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        request.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n\r\n")
        recorder = Recorder()
        request.protocol.set_parser(recorder)  # type: ignore[arg-type]
        taker = Taker(request.protocol)
        taker.data += recorder.data
        takers.append(taker)
        request.transport.set_protocol(taker)
        return _handed_over(request)

    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(UPGRADE + b"with the request|")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 101 ")
        for _ in range(50):  # the handler has returned, and its task has ended
            if not server.connections[0]._request_in_progress:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        writer.write(b"after the handler returned")
        await writer.drain()
        for _ in range(100):
            if takers[0].data.endswith(b"returned"):
                break
            await asyncio.sleep(0.01)
        assert bytes(takers[0].data) == b"with the request|after the handler returned"
        assert len(server.connections) == 1  # open, and still known to aiohttp
        writer.close()
        await asyncio.wait_for(takers[0].lost, 5)
        assert server.connections == []
    finally:
        await runner.cleanup()
