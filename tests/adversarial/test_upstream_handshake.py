"""Upstreams that answer the handshake wrongly: the client gets 502, the upstream
connection is aborted, nothing leaks, and no internal address reaches the client."""

from __future__ import annotations

import asyncio

from tests.support import (
    RawUpstream,
    eventually,
    handshake_head,
    objects_for,
    raw_exchange,
    status_of,
    switching,
)


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def _endless_head(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
    for i in range(10_000):
        writer.write(b"X-More-%d: %s\r\n" % (i, b"m" * 100))
        await writer.drain()
        await asyncio.sleep(0)


ANSWERS = {
    "bare LF in a header": lambda key: switching(key, "X-Evil: a\nInjected: b"),
    "bare CR in a header": lambda key: switching(key, "X-Evil: a\rInjected: b"),
    "NUL in a header": lambda key: switching(key, "X-Evil: a\x00b"),
    "wrong accept": lambda key: switching("c29tZSBvdGhlciBrZXkgISE="),
    "200 instead of 101": lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "401 instead of 101": lambda key: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
    "500 instead of 101": lambda key: b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    "subprotocol never offered": lambda key: switching(key, "Sec-WebSocket-Protocol: evil"),
    "extension never offered": lambda key: switching(
        key, "Sec-WebSocket-Extensions: permessage-deflate"),
    "garbage": lambda key: b"\x00\x01garbage\r\n\r\n",
}


CASES = [*ANSWERS, "never-ending head"]


async def test_a_bad_upstream_answer_is_a_502_and_the_upstream_is_aborted(serve):
    async def handler(reader, writer, key, head):
        case = CASES[int(head.split(b" ")[1].rsplit(b"/", 1)[1])]
        if case == "never-ending head":
            await _endless_head(writer)
        else:
            await _send(writer, ANSWERS[case](key))

    async with RawUpstream(handler) as bad:
        backend = {"service": {"name": "echo", "port": 8080}, "retries": 0,
                   "connectTimeoutSeconds": 3}
        served = await serve(objects=objects_for(bad.port), backend=backend)
        for i, case in enumerate(CASES):
            answer = await raw_exchange(served.proxy.port,
                                        handshake_head(f"/.ws/{i}", "h", "apikey: john-key"))
            assert status_of(answer) == 502, (case, answer[:200])
            assert b"127.0.0.1" not in answer, case  # no internal address in the body
            # Aborted, not leaked.
            await eventually(lambda: _equal(bad.open, 0), timeout=5)
            assert bad.connections == i + 1, case


async def _equal(actual, expected):
    assert actual == expected
