"""The relay claims the bytes after a 101 through aiohttp's `protocol.set_parser`, which
is not public API (aiohttp's own WebSocketResponse uses it). The minor version is
pinned in pyproject.toml; this test fails loudly if an upgrade changes the hook."""

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
              "_messages", "_force_close", "_close", "_loop"}
    assert needed <= slots, f"aiohttp changed RequestHandler: {needed - slots} are gone"
