"""The HTTP/1.1 front (listener.py) against clients that misuse HTTP: pipelining, with
and without reading the answers.

Serial: the memory bound is sampled from /proc while the proxy works alone.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.support import Bystander, MemoryPeak, eventually, raw_exchange, status_of

pytestmark = pytest.mark.serial

# Short bounds, so each attack is over in seconds.
LIMITS = ("--head-timeout", "2", "--keepalive-timeout", "3")


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


async def test_pipelined_refusals_never_read_do_not_pile_up_in_the_proxy(serve):
    """A client pipelines refused requests and never reads an answer: the proxy stops
    reading it once its write buffer is full, instead of queueing every answer, and
    closes it when keep-alive ends (a close() would wait for the client to read)."""
    served = await serve(proxy_args=LIMITS)
    pid, port = served.proxy.proc.pid, served.proxy.port
    # A 404 that repeats a long path: ~8 KiB an answer for ~8 KiB a request.
    request = f"GET /{'n' * 8000} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    answer = await raw_exchange(port, request)
    assert status_of(answer) == 404, answer[:200]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    async with MemoryPeak(pid) as memory, Bystander(served.url) as bystander:
        try:
            async with asyncio.timeout(5):
                while sent < 8000:  # 64 MiB of requests, as many answers
                    writer.write(request * 50)
                    await writer.drain()
                    sent += 50
        except (TimeoutError, ConnectionError):
            pass  # the proxy stopped reading (and, after keep-alive, cut the connection)

    async def closed_by_the_proxy() -> None:
        assert len(os.listdir(f"/proc/{pid}/fd")) <= fds

    await eventually(closed_by_the_proxy, timeout=6)  # keep-alive 3 s
    writer.transport.abort()
    print(f"FIGURES unread pipelined refusals: {sent} requests sent, "
          f"peak +{memory.grown_kib} KiB, bystander worst {bystander.worst:.2f}s")
    assert sent < 8000, "the proxy read 64 MiB of requests whose answers were never read"
    assert memory.grown_kib < 16 * 1024, f"the proxy grew {memory.grown_kib} KiB"
    bystander.assert_served()


SECRET = "s3cr3t-credential-value"
# Malformed heads whose offending line carries a credential (the parser's error quotes
# the line it stopped on).
LEAKY = [
    f"GET /.ws HTTP/1.1\r\nHost: h\r\nAuthorization: Basic {SECRET}\x01\r\n\r\n",
    f"GET /.ws?apikey={SECRET}\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
    f"GET /.ws HTTP/1.1\r\nHost: h\r\nCookie: session={SECRET}\x7f\r\n\r\n",
    f"GET /.ws HTTP/1.1\r\nHost: h\r\napikey: {SECRET}\x00\r\n\r\n",
]


def _assert_never_logged(proc, secret: str) -> None:
    records = proc.log_records()
    assert not [r for r in records if secret in str(r)], "a credential was logged"
    assert secret not in "\n".join(proc.other_output)


async def test_a_malformed_head_never_puts_its_credential_in_a_log_line(serve):
    served = await serve()
    proxy = served.proxy
    for head in LEAKY:
        since = len(proxy.log_records())
        answer = await raw_exchange(proxy.port, head.encode("latin-1"))
        assert status_of(answer) == 400, (head, answer[:300])
        proxy.wait_for_log(lambda r: r.get("event") == "request head refused", since=since)
    # The admin listener (aiohttp's server): its bearer token in a malformed head.
    since = len(proxy.log_records())
    answer = await raw_exchange(proxy.admin_port, (
        f"GET /metrics HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {SECRET}\x01\r\n\r\n"
    ).encode("latin-1"))
    assert status_of(answer) == 400, answer[:300]
    proxy.wait_for_log(lambda r: r.get("event") == "bad request from client", since=since)
    _assert_never_logged(proxy, SECRET)


async def test_connect_is_refused_like_any_request_that_is_not_a_handshake(serve):
    """CONNECT's message is complete at the end of its head; its payload then called
    flow control on the listener, which had none: no answer, and an error log with a
    traceback per request (any client could fill the log)."""
    served = await serve()
    proxy = served.proxy
    for request, status in (
            (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 400),
            # A route's path, not a WebSocket handshake: what to send instead.
            (b"CONNECT /.ws HTTP/1.1\r\nHost: h\r\napikey: john-key\r\n\r\n", 426)):
        answer = await raw_exchange(proxy.port, request)
        assert status_of(answer) == status, answer[:300]
        # One Connection header: the refusal's own token (a 426's "upgrade") and "close".
        lines = answer.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
        connection = [line for line in lines if line.startswith(b"connection:")]
        assert connection == [b"connection: upgrade, close" if status == 426
                              else b"connection: close"], answer[:300]
    errors = [r for r in proxy.log_records() if r["level"] == "error"]
    assert errors == []


async def _held(port: int, data: bytes, limit: float) -> tuple[float, bytes]:
    """Send ``data`` (maybe nothing); how long until the proxy closed, what it answered."""
    started = time.monotonic()
    answer = await raw_exchange(port, data, timeout=limit)
    return time.monotonic() - started, answer


async def test_the_tls_listener_holds_a_stalled_or_garbled_handshake_no_longer_than_a_head(
        serve):
    """A TLS handshake is the first part of a wss:// request head: it gets the head's
    timeout (asyncio's default was 60 s, a slowloris on the TLS port), and garbage or
    plain HTTP instead of a ClientHello is closed at once."""
    served = await serve(proxy_args=("--tls-listen", "127.0.0.1:0", *LIMITS))
    port = served.proxy.address("tls_listen")[1]
    hello_start = bytes.fromhex("160301020001")  # a ClientHello's record, cut short
    async with Bystander(served.url) as bystander:
        stalled = await asyncio.gather(*(_held(port, data, 10) for data in
                                         (b"", hello_start) * 50))
        garbled = await asyncio.gather(
            _held(port, b"GET /.ws HTTP/1.1\r\nHost: h\r\n\r\n", 10),
            _held(port, bytes(range(256)) * 4, 10))
    held = max(t for t, _ in stalled)
    print(f"FIGURES stalled TLS handshakes: 100 conns, held max {held:.1f}s")
    assert held < 5, f"a stalled TLS handshake was held {held:.1f}s (head timeout 2s)"
    assert all(t < 2 and not data.startswith(b"HTTP/1.1 101") for t, data in garbled)
    bystander.assert_served()
