"""The HTTP/1.1 front (listener.py) against clients that misuse HTTP: pipelining.

Serial: the memory bound is sampled from /proc while the proxy works alone.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import Bystander, MemoryPeak

pytestmark = pytest.mark.serial


async def test_pipelined_requests_are_read_no_faster_than_they_are_answered(serve):
    """Small pipelined requests, many per read: the proxy keeps at most MAX_PENDING
    bytes of them (it paused reading once, then resumed it after every answer, a read's
    worth of bytes per 40-byte request)."""
    served = await serve()
    pid, port = served.proxy.proc.pid, served.proxy.port
    request = b"GET /nothing-here HTTP/1.1\r\nHost: h\r\n\r\n"
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    async with MemoryPeak(pid) as memory, Bystander(served.url) as bystander:
        try:
            async with asyncio.timeout(4):
                while sent < 1 << 20:  # 40 MiB of requests
                    writer.write(request * 4096)
                    await writer.drain()
                    sent += 4096
        except TimeoutError:
            pass
    writer.transport.abort()
    print(f"FIGURES pipelined small requests: {sent} sent, peak +{memory.grown_kib} KiB, "
          f"bystander worst {bystander.worst:.2f}s")
    assert memory.grown_kib < 16 * 1024, f"the proxy grew {memory.grown_kib} KiB"
    bystander.assert_served()
