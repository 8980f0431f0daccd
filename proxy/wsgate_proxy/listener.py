"""The client listeners (ws:// and wss://): HTTP/1.1 up to the upgrade, and nothing more.

Each connection is a ``ClientConnection``, an asyncio Protocol that feeds what the client
sends to aiohttp's C HTTP parser (llhttp) and hands each complete request head to the
gateway (gateway.py), which decides. No web framework in between: per handshake there is
one parser per connection, one task for the gateway's coroutine and the parser's own
message, not aiohttp's handler, request, response and writer objects and two tasks. When
the gateway answers 101 the connection is handed over: from then on the session
(relay.py) owns the transport and this object is let go. When it refuses, its answer is
written here as a raw HTTP response: the refusal's status, headers (``WWW-Authenticate``,
``Retry-After``, ``Location``...) and plain-text body, and ``Connection: close`` when the
connection cannot carry another request (the client asked for it, HTTP/1.0 without
keep-alive, or the request had a body, which is never read).

Bounds, since a client may send anything: the parser limits each header line to 8190
bytes and a head to 128 headers (400 beyond); a head as a whole may take at most
``HeadLimits.max_bytes`` (431) and ``timeout_seconds`` from its first byte (408); a
connection with no request under way (before the first, between two) is closed after
``keepalive_seconds``. The parser is only ever fed up to the end of one head, so a
chunk of pipelined requests is parsed one request at a time, each after the last was
answered; what a client sends while its request is being answered (the first frames of
a session, or a pipelined request) waits here up to MAX_PENDING bytes, then in the
kernel. A refusal that closes the connection is followed by a half-close, and what the
client still sends is read and dropped for LINGER_SECONDS before the socket is closed:
closing a socket with unread bytes resets it, and the client would never see its answer.

tests/component/test_aiohttp_parser.py checks the parser's interface this relies on
(aiohttp's minor version is pinned).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD

from .refusals import Refusal

log = logging.getLogger("wsgate.listener")

# After an answer that closes the connection: how long what the client still sends is
# read and dropped.
LINGER_SECONDS = 2.0
# What a client may send after a request head while the request is being answered
# (a session's first frames; a pipelined request) before reading from it pauses.
MAX_PENDING = 64 * 1024
# aiohttp's limits for one header line and the number of headers (400 beyond).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128

_HEAD_END = b"\r\n\r\n"
# Connection states.
_HEAD = 0  # reading a request head (or waiting for one)
_BUSY = 1  # a request is being answered by the gateway
_UPGRADED = 2  # the 101 is written, the session not started yet
_READER = 3  # upgraded, the bytes go to a reader (FirstMessage's auth message)
_CLOSING = 4  # answered and closing: what arrives is dropped
_DONE = 5  # handed over to a session, or closed


@dataclass(frozen=True)
class HeadLimits:
    # The time from a head's first byte to its last.
    timeout_seconds: float = 5.0
    # The bytes of one head, request line and headers together.
    max_bytes: int = 64 * 1024
    # An open connection with no request under way (before the first, between two).
    keepalive_seconds: float = 15.0


class Sink(Protocol):
    """What takes a connection's bytes after the upgrade (the session, a reader)."""

    def feed_data(self, data: bytes) -> None: ...
    def feed_eof(self) -> None: ...


# The gateway: answers a request head with a Refusal to write, or None when it wrote
# the 101 (or the client is gone).
Handler = Callable[[RawRequestMessage, "ClientConnection"], Awaitable[Refusal | None]]


class Listener:
    """The client listeners' connections: started per address, closed together."""

    def __init__(self, handler: Handler, limits: HeadLimits) -> None:
        self.handler = handler
        self.limits = limits
        # Connections not (yet) owned by a session: closed on shutdown.
        self.connections: set[ClientConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self, host: str, port: int, *, backlog: int,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        """Listen on ``host:port`` (over TLS with ``ssl_context``); the address bound."""
        secure = ssl_context is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self, loop, secure), host, port, ssl=ssl_context,
            backlog=backlog)
        self._servers.append(server)
        for sock in server.sockets:
            # TCP keep-alive finds the dead peers of idle sessions; set here, it is
            # inherited by every accepted connection (no system call per connection).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        bound = server.sockets[0].getsockname()
        return bound[0], bound[1]

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        """Stop accepting, cancel the handshakes under way and close every connection no
        session owns (idle ones, those mid-head or mid-handshake)."""
        self.stop_accepting()
        tasks = [t for c in list(self.connections) if (t := c.close()) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class ClientConnection(asyncio.Protocol):
    """One client connection until a session owns it or it closes."""

    __slots__ = ("_head_bytes", "_listener", "_loop", "_parser", "_paused", "_pending",
                 "_seen", "_sink", "_state", "_task", "_timer", "remote", "secure",
                 "transport")

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop,
                 secure: bool) -> None:
        self._listener = listener
        self._loop = loop
        self.secure = secure
        self.remote = ""
        self.transport: asyncio.Transport | None = None
        self._state = _HEAD
        self._parser: HttpRequestParser | None = None
        self._head_bytes = 0  # of the head being read
        self._seen = b""  # its last 3 bytes, for an end of head split across reads
        self._pending = b""  # read after a head, while its request is answered
        self._paused = False  # reading paused for _pending
        self._sink: Sink | None = None
        self._task: asyncio.Task[None] | None = None
        # The keep-alive timer between requests, the head timer while one arrives, the
        # linger after a closing answer.
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        self._listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)):
            self.remote = str(peer[0])
        self._arm(self._listener.limits.keepalive_seconds)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _HEAD:
            self._read_head(data)
        elif state in (_BUSY, _UPGRADED):
            self._pending += data
            if len(self._pending) >= MAX_PENDING and not self._paused:
                self._paused = True
                self._transport().pause_reading()
        elif state == _READER:
            assert self._sink is not None
            self._sink.feed_data(data)
        # _CLOSING: lingering after an answer, dropped unread

    def eof_received(self) -> bool | None:
        return None  # close: the client has nothing more to ask

    def connection_lost(self, exc: BaseException | None) -> None:
        self._listener.connections.discard(self)
        self._disarm()
        state, self._state = self._state, _DONE
        self._parser = None
        if state == _READER and self._sink is not None:
            self._sink.feed_eof()
        # A request under way (_BUSY) goes on: the gateway sees the transport closing
        # before it writes, and lets go of what it holds.

    # -- for the gateway -------------------------------------------------------------
    def upgrade(self, head: bytes) -> bool:
        """Write the 101 (built whole by the gateway); False when the client is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(head)
        self._state = _UPGRADED
        return True

    def read_into(self, sink: Sink) -> None:
        """After the 101: the client's bytes go to ``sink`` (what was read after the head
        first), its end to ``sink.feed_eof``, until ``hand_over``."""
        self._state = _READER
        self._sink = sink
        self._flush_pending(sink)

    def hand_over(self, session: Sink) -> None:
        """The session owns the connection from now on (its transport's protocol is the
        session's already): what was read after the head goes to it, and this
        connection is let go."""
        self._listener.connections.discard(self)
        self._disarm()
        self._state = _DONE
        self._sink = None
        self._parser = None
        self._flush_pending(session)

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _flush_pending(self, sink: Sink) -> None:
        pending, self._pending = self._pending, b""
        if pending:
            sink.feed_data(pending)
        if self._paused:
            self._paused = False
            self._transport().resume_reading()

    # -- request heads ---------------------------------------------------------------
    def _read_head(self, data: bytes) -> None:
        """Feed the parser up to the end of the first head in ``data``; answer it."""
        limits = self._listener.limits
        while data:
            seen = self._seen
            scan = seen + data if seen else data
            end = scan.find(_HEAD_END)
            cut = len(data) if end < 0 else end + 4 - len(seen)
            size = self._head_bytes + cut
            if size > limits.max_bytes:
                self._refuse_head(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                  f"the request head exceeds {limits.max_bytes} bytes")
                return
            parser = self._parser
            if parser is None:
                parser = self._parser = HttpRequestParser(
                    self, self._loop, 2**16, max_line_size=MAX_LINE_BYTES,
                    max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS,
                    auto_decompress=False)
            part = data if cut == len(data) else data[:cut]
            try:
                messages, _upgraded, tail = parser.feed_data(part)
            except HttpProcessingError as exc:
                self._refuse_head(HTTPStatus.BAD_REQUEST, str(exc.message))
                return
            if messages:
                message, payload = messages[0]
                self._head_bytes, self._seen = 0, b""
                # What follows the head (the parser's tail is empty: it was fed no further).
                self._begin(message, payload is not EMPTY_PAYLOAD, tail + data[cut:])
                return
            if self._head_bytes == 0:  # a head has begun: its deadline replaces keep-alive
                self._arm(limits.timeout_seconds)
            self._head_bytes = size
            self._seen = (seen + part)[-3:] if len(part) < 3 else part[-3:]
            data = data[cut:]  # after blank lines before a request line: the rest

    def _begin(self, message: RawRequestMessage, has_body: bool, rest: bytes) -> None:
        self._disarm()
        self._state = _BUSY
        if rest:
            self._pending = rest
        self._task = self._loop.create_task(self._serve(message, has_body))

    async def _serve(self, message: RawRequestMessage, has_body: bool) -> None:
        failed = False
        try:
            refusal = await self._listener.handler(message, self)
        except Exception:
            log.exception("unexpected error while answering a request")
            refusal, failed = Refusal("internal error", status=500), True
        finally:
            self._task = None
        transport = self.transport
        if transport is not None and (self._state == _UPGRADED or
                                      (failed and self._state == _READER)):
            transport.abort()  # a 101 and no session: nothing more can be said here
            return
        if self._state != _BUSY or transport is None or transport.is_closing():
            return  # a session or a reader owns the connection, or the client left
        if refusal is None:  # nothing to say (the gateway gave up on the client)
            transport.close()
            return
        # Closed after the answer: when the client asked, when its body was never read,
        # and after an error of the proxy's own.
        close = message.should_close or has_body or refusal.status == 500
        transport.write(_response(refusal, close, message.version,
                                  head_only=message.method == "HEAD"))
        if close:
            self._close_after_answer()
            return
        # Keep-alive: the next request, starting with what the client pipelined.
        self._state = _HEAD
        self._parser = None  # a fresh one: this one may have switched to "upgraded"
        self._arm(self._listener.limits.keepalive_seconds)
        pending, self._pending = self._pending, b""
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if pending:
            self._read_head(pending)

    # -- answers of the listener's own, and closing ------------------------------------
    def _refuse_head(self, status: HTTPStatus, message: str) -> None:
        """A head that cannot be served (malformed, too big, too slow): answer, close."""
        log.info("request head refused", extra={"client": self.remote, "status": status.value,
                                                "reason": message[:200]})
        transport = self._transport()
        transport.write(_response(Refusal(message, status=status.value), True, (1, 1)))
        self._close_after_answer()

    def _close_after_answer(self) -> None:
        """Half-close, drop what the client still sends for LINGER_SECONDS, then close."""
        transport = self._transport()
        self._state = _CLOSING
        self._parser = None
        self._pending = b""
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._arm(LINGER_SECONDS)

    def close(self) -> asyncio.Task[None] | None:
        """Shutdown: cancel the request under way, close the connection; the task, to
        wait for."""
        task = self._task
        if task is not None:
            task.cancel()
        if self.transport is not None and self._state != _DONE:
            self.transport.close()
        return task

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._state == _HEAD and self._head_bytes:
            limits = self._listener.limits
            self._refuse_head(HTTPStatus.REQUEST_TIMEOUT, "the request head did not arrive "
                                                          f"within {limits.timeout_seconds:g}s")
        elif self._state in (_HEAD, _CLOSING):  # idle past keep-alive; the linger's end
            transport.close()


_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def _response(refusal: Refusal, close: bool, version: tuple[int, int],
              head_only: bool = False) -> bytes:
    """A refusal as an HTTP/1.1 response: its status, headers and body (the message as
    plain text, or an auth server's own body)."""
    if refusal.body is not None:
        body, content_type = refusal.body, "application/octet-stream"
    else:
        body, content_type = (refusal.message + "\n").encode(), "text/plain; charset=utf-8"
    try:
        phrase = HTTPStatus(refusal.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {refusal.status} {phrase}", f"Date: {_http_date()}"]
    for name, value in refusal.headers:
        if "\r" in value or "\n" in value:  # never a header split in two
            continue
        if name.lower() == "content-type":
            content_type = value
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    elif version < (1, 1):
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head if head_only else head + body
