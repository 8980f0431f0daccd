"""The session's flow control from its first byte: real sockets (socketpairs), the real
Session and upstream protocol; a stand-in only for the listener's connection."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from wsgate_proxy.relay import Session
from wsgate_proxy.upstream import UpstreamProtocol


class ClientConnection(asyncio.Protocol):
    """What owns the client's connection before the session (the listener's)."""

    def __init__(self) -> None:
        self.pauses = 0

    def pause_writing(self) -> None:
        self.pauses += 1


def binary_frame(size: int) -> bytes:
    return bytes([0x82, 127]) + size.to_bytes(8, "big") + b"u" * size


async def test_a_greeting_that_fills_the_client_pauses_the_upstream_from_the_start():
    # asyncio tells a transport's protocol once that its write buffer went over the
    # high-water mark. The upstream's greeting (read with its 101) is written to a client
    # that never reads as the session starts: that one pause must reach the session, or
    # the upstream is never paused and the proxy buffers all it streams.
    loop = asyncio.get_running_loop()
    client_side, client = socket.socketpair()
    upstream_side, upstream = socket.socketpair()
    client_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
    client_transport, handler = await loop.create_connection(ClientConnection, sock=client_side)
    upstream_transport, dialled = await loop.create_connection(UpstreamProtocol,
                                                               sock=upstream_side)
    dialled.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + binary_frame(300_000))
    route = SimpleNamespace(key="default/echo", limits=SimpleNamespace(
        max_message_bytes=None, messages_per_second=None))
    handshake = SimpleNamespace(route=route, host="h", path="/",
                                who=SimpleNamespace(identity=None, valid_until=None))
    session = Session(handshake, SimpleNamespace(), client_transport=client_transport,
                      upstream_transport=upstream_transport,
                      upstream_protocol=dialled, on_end=lambda _session: None)
    try:
        session.take_over()
        session.start()
        assert handler.pauses == 0  # the pause went to the session
        assert not upstream_transport.is_reading()
        upstream.setblocking(False)
        sent = 0
        try:  # the upstream streams on until its socket is full
            for _ in range(200):
                sent += upstream.send(binary_frame(100_000))
                await asyncio.sleep(0)
        except BlockingIOError:
            pass
        for _ in range(10):
            await asyncio.sleep(0)
        assert client_transport.get_write_buffer_size() < 1 << 20
    finally:
        client_transport.abort()
        upstream_transport.abort()
        client.close()
        upstream.close()
