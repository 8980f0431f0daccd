"""After the upgrade: control frames that break RFC 6455 section 5.5, from either side.

A control frame may carry at most 125 bytes and may not be fragmented. One that
declares more (a close frame of 2^62 bytes) used to be buffered until "complete",
re-concatenated on every chunk: one connection stalled the event loop for tens of
seconds. Now it is a protocol error: close 1002 to that side, at once, nothing held.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support import (
    KEY,
    Bystander,
    MemoryPeak,
    RawUpstream,
    eventually,
    handshake_head,
    objects_for,
    switching,
)

HUGE_CLOSE = b"\x88\xff" + struct.pack("!Q", 1 << 62) + os.urandom(4)  # masked, 2^62 bytes
FRAGMENTED_PING = b"\x09\x81" + os.urandom(4) + b"p"  # FIN=0


async def _read_close(reader: asyncio.StreamReader, timeout: float) -> int | None:
    """The code of the close frame the proxy sends (unmasked), or None if it closed
    without one."""
    async with asyncio.timeout(timeout):
        await reader.readuntil(b"\r\n\r\n")  # the 101
        while True:
            head = await reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(length)
            if head[0] & 0x0F == 0x08:
                return struct.unpack("!H", payload[:2])[0]


async def _attack(port: int, frame: bytes, stream_seconds: float) -> tuple[int | None, float]:
    """Upgrade, send ``frame`` and then junk for a while; the close code and how long
    it took to come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_head("/.ws", "h", "apikey: john-key"))
    started = time.monotonic()
    writer.write(frame)

    async def junk() -> None:
        chunk = os.urandom(65536)
        deadline = time.monotonic() + stream_seconds
        try:
            while time.monotonic() < deadline:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 1)
        except (ConnectionError, TimeoutError):
            pass

    streaming = asyncio.create_task(junk())
    try:
        code = await _read_close(reader, 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        code = None
    elapsed = time.monotonic() - started
    streaming.cancel()
    writer.close()
    return code, elapsed


@pytest.mark.parametrize("frame", [HUGE_CLOSE, FRAGMENTED_PING], ids=["close-2^62", "ping-fin0"])
async def test_client_control_frame_over_125_bytes_or_fragmented_closes_1002(serve, upstream,
                                                                              frame):
    served = await serve()
    async with MemoryPeak(served.proxy.proc.pid) as memory, Bystander(served.url) as bystander:
        results = await asyncio.gather(*(_attack(served.proxy.port, frame, 3)
                                         for _ in range(20)))
        await asyncio.sleep(1)  # and a while after
    codes = [code for code, _ in results]
    slowest = max(t for _, t in results)
    print(f"FIGURES client {frame[:2].hex()}: 20 conns, closes {set(codes)} within "
          f"{slowest:.2f}s, peak +{memory.grown_kib} KiB, bystander worst {bystander.worst:.2f}s")
    assert codes == [1002] * 20
    assert slowest < 2
    assert memory.grown_kib < 64 * 1024
    bystander.assert_served()
    # The upstream of each attacker is told too (the bystander's close with 1000).
    await eventually(lambda: _at_least(upstream.close_codes.count(1002), 20))


async def test_upstream_control_frame_over_125_bytes_closes_1002(serve, upstream):
    async def hostile(reader, writer, key, head):
        writer.write(switching(key))
        writer.write(b"\x88\x7f" + struct.pack("!Q", 1 << 62))  # unmasked, 2^62 bytes
        chunk = os.urandom(65536)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            writer.write(chunk)
            await writer.drain()

    async with RawUpstream(hostile) as bad:
        objects = objects_for(upstream.port)
        served = await serve(objects=objects)
        # A second route to the hostile upstream, beside the well-behaved one.
        extra = [o for o in objects_for(bad.port) if o["kind"] in ("Service", "EndpointSlice",
                                                                   "WsRoute")]
        for obj in extra:
            obj["metadata"]["name"] = "bad"
            if obj["kind"] == "EndpointSlice":
                obj["metadata"]["labels"]["kubernetes.io/service-name"] = "bad"
            if obj["kind"] == "WsRoute":
                obj["spec"]["paths"] = [{"type": "Exact", "value": "/bad"}]
                obj["spec"]["backend"]["service"]["name"] = "bad"
        served.objects += extra
        await served.push()
        async with MemoryPeak(served.proxy.proc.pid) as memory, \
                Bystander(served.url) as bystander:
            started = time.monotonic()
            ws = await connect(served.base + "/bad", additional_headers=KEY)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            elapsed = time.monotonic() - started
            await asyncio.sleep(1)  # the upstream goes on streaming meanwhile
        print(f"FIGURES upstream close 2^62: client closed {ws.close_code} after "
              f"{elapsed:.2f}s, peak +{memory.grown_kib} KiB, "
              f"bystander worst {bystander.worst:.2f}s")
        assert ws.close_code == 1002
        assert elapsed < 2
        assert memory.grown_kib < 64 * 1024
        bystander.assert_served()


async def _at_least(value: int, minimum: int) -> None:
    assert value >= minimum
