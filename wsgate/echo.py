"""`wsgate echo`: a WebSocket upstream for demos and tests.

It greets each connection with ``Request served by <id>`` and echoes every text and
binary message. It accepts the subprotocol ``echo`` when offered.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import WSMsgType, web

log = logging.getLogger("wsgate.echo")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def echo_app(server_id: str | None = None) -> web.Application:
    name = server_id or socket.gethostname()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("echo",), max_msg_size=MAX_MESSAGE_BYTES)
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="this is a WebSocket echo server\n",
                                headers={"Upgrade": "websocket"})
        await ws.prepare(request)
        await ws.send_str(f"Request served by {name}")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


async def serve(listen: tuple[str, int], server_id: str | None, stop: asyncio.Event) -> None:
    runner = web.AppRunner(echo_app(server_id), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, *listen).start()
        host, port = runner.addresses[0][:2]
        log.info("listening", extra={"listen": f"{host}:{port}", "id": server_id})
        await stop.wait()
    finally:
        await runner.cleanup()
