"""Before the upgrade: request heads that never end, never stop growing, or never come.

Each attack runs against a real proxy while a well-behaved client keeps doing whole
handshakes and echoes (Bystander), and the proxy's memory is sampled from /proc.
"""

from __future__ import annotations

import asyncio
import time

from tests.support import Bystander, MemoryPeak, status_of

# Short bounds, so each attack is over in seconds.
LIMITS = ("--head-timeout", "2", "--keepalive-timeout", "3")


async def _slow_client(port: int, interval: float, stop_after: float) -> tuple[float, bytes]:
    """A head a byte at a time; returns how long the proxy kept it and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    head = b"GET /.ws HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 1000
    answer = b""
    try:
        for byte in head:
            writer.write(bytes((byte,)))
            try:
                answer = await asyncio.wait_for(reader.read(4096), interval)
            except TimeoutError:
                if time.monotonic() - started > stop_after:
                    break
                continue
            break  # an answer, or the connection closed (b"")
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, answer


async def test_slowloris_is_closed_after_the_head_timeout(serve):
    served = await serve(proxy_args=LIMITS)
    pid, port = served.proxy.proc.pid, served.proxy.port
    async with MemoryPeak(pid) as memory, Bystander(served.url) as bystander:
        results = await asyncio.gather(*(_slow_client(port, 0.5, stop_after=8)
                                         for _ in range(200)))
    held = sorted(t for t, _ in results)
    statuses = {status_of(answer) for _, answer in results}
    print(f"FIGURES slowloris: 200 conns, held max {held[-1]:.1f}s, "
          f"peak +{memory.grown_kib} KiB, bystander worst {bystander.worst:.2f}s")
    assert held[-1] < 5, f"a byte-a-second head was held {held[-1]:.1f}s (head timeout 2s)"
    assert statuses <= {408, None}, statuses  # 408 Request Timeout, or just closed
    assert 408 in statuses
    bystander.assert_served()
    assert memory.grown_kib < 64 * 1024


async def _hoarder(port: int, total: int) -> tuple[int, bytes]:
    """A head of ``total`` bytes in lines under every per-line limit, never finished."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Read while sending, as a browser does: an answer may come before the head ends.
    answered = asyncio.create_task(reader.read(4096))
    writer.write(b"GET /.ws HTTP/1.1\r\nHost: h\r\n")
    sent = 0
    try:
        while sent < total and not answered.done():
            line = b"X-Hoard-%d: %s\r\n" % (sent, b"h" * 8000)
            writer.write(line)
            sent += len(line)
            await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, TimeoutError):
        pass
    try:
        answer = await asyncio.wait_for(answered, 5)
    except (ConnectionError, TimeoutError):
        answer = b""
    writer.close()
    return sent, answer


async def test_head_hoarding_gets_431_at_the_total_cap(serve):
    served = await serve(proxy_args=LIMITS)
    pid, port = served.proxy.proc.pid, served.proxy.port
    async with MemoryPeak(pid) as memory, Bystander(served.url) as bystander:
        results = await asyncio.gather(*(_hoarder(port, 1 << 20) for _ in range(200)))
    statuses = [status_of(answer) for _, answer in results]
    print(f"FIGURES head hoarding: 200 conns x up to 1 MiB, peak +{memory.grown_kib} KiB, "
          f"bystander worst {bystander.worst:.2f}s, statuses {sorted(set(map(str, statuses)))}")
    assert statuses.count(431) >= 190, statuses  # a few may only see the close
    assert all(s in (431, None) for s in statuses)
    assert memory.grown_kib < 96 * 1024, f"the proxy grew {memory.grown_kib} KiB"
    bystander.assert_served()


async def test_idle_connections_are_closed_after_the_keepalive_timeout(serve):
    served = await serve(proxy_args=LIMITS)
    port = served.proxy.port

    async def idle(after_request: bool) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        if after_request:  # one keep-alive request (a 404), then nothing
            writer.write(b"GET /nothing-here HTTP/1.1\r\nHost: h\r\n\r\n")
        try:
            async with asyncio.timeout(8):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        return time.monotonic() - started

    async with Bystander(served.url) as bystander:
        held = await asyncio.gather(*(idle(i % 2 == 1) for i in range(100)))
    print(f"FIGURES idle keep-alive: 100 conns, held max {max(held):.1f}s")
    assert max(held) < 6, f"an idle connection was held {max(held):.1f}s (keep-alive 3s)"
    assert min(held) > 2  # not before the keep-alive timeout
    bystander.assert_served()
