"""The client listener's HTTP/1.1 (wsgate_proxy.listener): what a client sends before its
session starts, in whatever pieces, reaches the right place; answers come in order; a
connection carries another request after a refusal unless it cannot."""

from __future__ import annotations

import asyncio

from tests.support import eventually, handshake_head, status_of
from wsgate_proxy.frames import read_frame, text_frame
from wsgate_proxy.listener import HeadLimits, Listener


async def _answers(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` HTTP answers (head, body) read off one connection, by Content-Length."""
    answers = []
    async with asyncio.timeout(5):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            answers.append((head, await reader.readexactly(length)))
    return answers


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str) -> str:
    writer.write(text_frame(text, masked=True))
    buffer = b""
    async with asyncio.timeout(5):
        while (found := read_frame(buffer, 1 << 20)) is None:
            buffer += await reader.read(4096)
    return found[0].payload.decode()


async def test_pipelined_requests_are_answered_in_order(serve):
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.proxy.port)
    writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /.ws HTTP/1.1\r\nHost: h\r\n\r\n"
                 + handshake_head("/.ws", "h"))  # no key: 401
    answers = await _answers(reader, 3)
    assert [status_of(head) for head, _ in answers] == [404, 426, 401]
    assert b"WWW-Authenticate: " in answers[2][0]
    assert b"no route" in answers[0][1]
    writer.close()


async def test_a_refused_handshake_leaves_the_connection_to_the_next(serve, upstream):
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.proxy.port)
    writer.write(handshake_head("/.ws", "h", "apikey: wrong-key"))
    [(head, _)] = await _answers(reader, 1)
    assert status_of(head) == 401
    assert b"Connection: close" not in head
    writer.write(handshake_head("/.ws", "h", "apikey: john-key"))
    assert status_of(await reader.readuntil(b"\r\n\r\n")) == 101
    assert await _echo(reader, writer, "same connection") == "same connection"
    writer.close()


async def test_frames_sent_with_the_handshake_reach_the_upstream(serve, upstream):
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.proxy.port)
    # Blank lines before the request line (allowed), the head split inside its own
    # blank line, the first frame in the head's last write.
    head = handshake_head("/.ws", "h", "apikey: john-key")
    writer.write(b"\r\n\r\n" + head[:-3])
    await writer.drain()
    await asyncio.sleep(0.05)  # apart, so that the proxy reads them as two chunks
    writer.write(head[-3:] + text_frame("with the head", masked=True))
    assert status_of(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)) == 101
    buffer = b""
    async with asyncio.timeout(5):
        while (found := read_frame(buffer, 1 << 20)) is None:
            buffer += await reader.read(4096)
    assert found[0].payload == b"with the head"
    writer.close()


async def test_a_request_with_a_body_is_answered_and_its_connection_closed(serve, upstream):
    served = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.proxy.port)
    writer.write(b"POST /.ws HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
                 + handshake_head("/.ws", "h", "apikey: john-key"))
    [(head, _)] = await _answers(reader, 1)
    assert status_of(head) == 426
    assert b"Connection: close" in head
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed: the body was never read as a request
    assert upstream.requests == []
    writer.close()


class _Raising:
    """A gateway stand-in that fails, before or after writing a 101, or never answers."""

    def __init__(self, after_101: bool = False, hang: bool = False) -> None:
        self.after_101, self.hang = after_101, hang
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, _message, client):
        self.entered.set()
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        if self.after_101:
            client.upgrade(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        raise RuntimeError("a bug")


async def _listening(handler) -> tuple[Listener, int]:
    listener = Listener(handler, HeadLimits())
    _host, port = await listener.start("127.0.0.1", 0, backlog=16)
    return listener, port


async def test_an_error_before_the_upgrade_is_a_500_and_closes():
    listener, port = await _listening(_Raising())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_head("/.ws", "h"))
        [(head, _)] = await _answers(reader, 1)
        assert status_of(head) == 500
        assert b"Connection: close" in head
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
    finally:
        await listener.close()


async def test_an_error_after_the_101_cuts_the_connection_without_another_answer():
    listener, port = await _listening(_Raising(after_101=True))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(handshake_head("/.ws", "h"))
        received = b""
        async with asyncio.timeout(5):
            try:
                while chunk := await reader.read(4096):
                    received += chunk
            except ConnectionError:
                pass
        assert received == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"  # no 500 after it
        writer.close()
    finally:
        await listener.close()


async def test_closing_cancels_handshakes_under_way_and_closes_idle_connections():
    handler = _Raising(hang=True)
    listener, port = await _listening(handler)
    busy_reader, busy = await asyncio.open_connection("127.0.0.1", port)
    busy.write(handshake_head("/.ws", "h"))
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(handler.entered.wait(), 5)  # a handshake under way

    async def both_accepted():
        assert len(listener.connections) == 2

    await eventually(both_accepted)
    await asyncio.wait_for(listener.close(), 5)
    assert handler.cancelled.is_set()
    async with asyncio.timeout(5):
        assert await busy_reader.read() == b""
        assert await idle_reader.read() == b""
    busy.close()
    idle.close()
