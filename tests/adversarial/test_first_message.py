"""FirstMessage mode under attack: the wait between the auth message and the session.

While the verdict or the upstream dial is pending, a client can stream on (it used to
be buffered without limit), leave (its upstream connection and limit slot used to
leak for good), or find its route gone (a KeyError after the 101).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import (
    Bystander,
    MemoryPeak,
    RawUpstream,
    eventually,
    handshake_head,
    objects_for,
    receive_until_closed,
    route,
    switching,
)
from wsgate_proxy.gateway import auth_message

FIRST_MESSAGE = {"mode": "FirstMessage", "methods": ["KeyAuth"]}
AUTH_OK = {"type": "auth", "ok": True}


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((0x80 | opcode,)) + (bytes((0x80 | n,)) if n < 126 else
                                      bytes((0x80 | 126,)) + struct.pack("!H", n) if n < 65536
                                      else bytes((0x80 | 127,)) + struct.pack("!Q", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def slow_upstream(delay: float) -> RawUpstream:
    """An upstream that takes ``delay`` seconds to answer the handshake, then reads."""
    async def handler(reader, writer, key, head):
        await asyncio.sleep(delay)
        writer.write(switching(key))

    return RawUpstream(handler)


async def _authenticate_then_stream(port: int, seconds: float) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_head("/.ws"))
    await reader.readuntil(b"\r\n\r\n")
    writer.write(masked(0x1, auth_message(apikey="john-key").encode()))
    frame = masked(0x2, os.urandom(60_000))  # masked once, sent again and again
    sent = await _send_for(writer, frame, seconds)
    writer.transport.abort()
    return sent


async def _send_for(writer: asyncio.StreamWriter, chunk: bytes, seconds: float,
                    at_most: int = 1 << 40) -> int:
    """Send ``chunk`` again and again for ``seconds`` (or ``at_most`` bytes) as fast as
    the peer reads; the bytes sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and sent < at_most:
            writer.write(chunk)
            sent += len(chunk)
            await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
    except (TimeoutError, ConnectionError):
        pass
    return sent


async def test_streaming_while_the_dial_is_pending_is_not_buffered(serve):
    async with slow_upstream(4) as upstream:
        backend = {"service": {"name": "echo", "port": 8080}, "connectTimeoutSeconds": 8}
        served = await serve(objects=objects_for(upstream.port), auth=FIRST_MESSAGE,
                             backend=backend)
        async with MemoryPeak(served.proxy.proc.pid) as memory:
            sent = await asyncio.gather(*(_authenticate_then_stream(served.proxy.port, 3)
                                          for _ in range(4)))
        print(f"FIGURES FirstMessage streaming during a 4s dial: 4 clients sent "
              f"{sum(sent) >> 20} MiB in 3s, proxy peak +{memory.grown_kib} KiB")
        assert memory.grown_kib < 48 * 1024, f"the proxy grew by {memory.grown_kib} KiB"


async def test_clients_leaving_during_the_dial_release_their_slot_and_upstream(serve):
    async with slow_upstream(1) as upstream:
        served = await serve(objects=objects_for(upstream.port), auth=FIRST_MESSAGE,
                             limits={"maxConnectionsPerConsumer": 1})
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.proxy.port)
            writer.write(handshake_head("/.ws"))
            await reader.readuntil(b"\r\n\r\n")
            writer.write(masked(0x1, auth_message(apikey="john-key").encode()))
            await asyncio.sleep(0.3)  # the dial is under way
            writer.transport.abort()
            # The upstream connection it caused ends too, once its dial is done.
            await eventually(lambda: _equal(upstream.open, 0), timeout=5)
        assert upstream.connections == 3
        # The consumer's one slot is free again (this upstream never answers a close).
        async with connect(served.url, close_timeout=0.1) as ws:
            await ws.send(auth_message(apikey="john-key"))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == AUTH_OK


async def test_route_removed_while_waiting_for_the_auth_message_closes_1001(serve, upstream):
    served = await serve(auth=FIRST_MESSAGE)
    async with connect(served.url) as ws:
        served.objects = [o for o in served.objects if o["kind"] != "WsRoute"]
        await served.push()
        await ws.send(auth_message(apikey="john-key"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(receive_until_closed(ws), 5)
    assert (ws.close_code, ws.close_reason) == (1001, "route removed")


async def test_4403_reason_names_nobody(serve, upstream):
    served = await serve(auth={**FIRST_MESSAGE, "allowedConsumers": {"names": ["alice"]}})
    async with connect(served.url) as ws:
        await ws.send(auth_message(apikey="john-key"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4403
    assert "john" not in ws.close_reason
    assert ws.close_reason == "not allowed on this route"


async def _equal(actual, expected):
    assert actual == expected


async def _read_until_closed(ws) -> None:
    while True:
        await ws.recv()


async def test_mid_session_auth_messages_one_at_a_time_and_a_flood_closes(serve, upstream):
    """Auth messages sent mid-session are taken out of the stream and checked one at a
    time: a client sending the next after each answer has each answered and loses none of
    its data messages, and the upstream never sees a credential; a client sending them
    back to back (each would cost a check and an answer) is closed with 1008."""
    served = await serve(route("fm", "/fm", FIRST_MESSAGE))  # the bystander's: Handshake
    async with Bystander(served.url) as bystander, \
            MemoryPeak(served.proxy.proc.pid) as memory, connect(served.base + "/fm") as ws:
        await ws.send(auth_message(apikey="john-key"))
        assert json.loads(await ws.recv()) == AUTH_OK
        answers, data = [], []
        for i in range(200):
            await ws.send(auth_message(apikey="john-key"))
            await ws.send(f"data {i}")
            while len(answers) <= i or len(data) <= i:  # the answer and the echo
                message = await asyncio.wait_for(ws.recv(), 10)
                (answers if message.startswith("{") else data).append(message)
        assert data == [f"data {i}" for i in range(200)]  # in order, none lost
        assert all(json.loads(a) == AUTH_OK for a in answers)
        assert not any("apikey" in d for d in data)  # no echo: the upstream saw none
        for _ in range(2000):  # back to back: a flood
            await ws.send(auth_message(apikey="john-key"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(_read_until_closed(ws), 10)
    assert ws.close_code == 1008
    assert ws.close_reason == "auth message sent before the previous one was answered"
    assert memory.grown_kib < 16 * 1024
    bystander.assert_served()


async def test_auth_messages_from_a_client_that_never_reads_cost_bounded_memory(serve,
                                                                                  upstream):
    """Auth messages are taken out of the stream, so the upstream's back-pressure never
    slows their sender; each gets an answer written to the client. A client that floods
    them and never reads (a 4 KiB receive buffer) stops being read once its answers back
    up, as relayed data would stop it: the proxy's memory stays flat."""
    import socket

    served = await serve(route("fm", "/fm", FIRST_MESSAGE))  # the bystander's: Handshake
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", served.proxy.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(handshake_head("/fm"))
    await reader.readuntil(b"\r\n\r\n")
    writer.write(masked(0x1, auth_message(apikey="john-key").encode()))
    flood = masked(0x1, auth_message(apikey="john-key").encode()) * 2048  # ~100 KB
    async with Bystander(served.url) as bystander, \
            MemoryPeak(served.proxy.proc.pid) as memory:
        sent = await _send_for(writer, flood, 3, at_most=32 * 1024 * 1024)
    writer.transport.abort()
    print(f"FIGURES unread auth answers: {sent / 2**20:.1f} MiB of auth messages offered "
          f"in 3 s; proxy grew {memory.grown_kib} KiB; bystander worst {bystander.worst:.2f}s")
    assert memory.grown_kib < 4 * 1024
    bystander.assert_served()
