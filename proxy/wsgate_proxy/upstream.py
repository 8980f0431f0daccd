"""Dialling an upstream endpoint and completing its WebSocket handshake.

The client's ``Sec-WebSocket-Key`` is passed through, so the upstream's
``Sec-WebSocket-Accept``, subprotocol and extensions can be returned to the client
as they are (permessage-deflate then runs end to end, and the proxy never inflates
a message). The handshake completes here before the client gets its 101.

The upstream's answer is held to what the client could accept: a 101 with the right
Sec-WebSocket-Accept, no bare CR or LF or other control characters in its head, and
no subprotocol or extension the client never offered (the client would fail the
handshake anyway). Anything else is an UpstreamError, and the connection is aborted
before the error leaves ``open_upstream``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import ssl
from dataclasses import dataclass
from typing import Protocol, cast

from multidict import CIMultiDict

from .config import Endpoint

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than tab, CR and LF included: once a head's CRLF pairs are
# taken out, a CR or LF left is a bare one, which would split a header when the value is
# passed on to the client.
_CONTROLS = bytes((*range(0x09), *range(0x0A, 0x20), 0x7F))


def has_control(head: bytes) -> bool:
    """Whether ``head`` holds a control character other than tab, or a CR or LF that is
    not part of a CRLF (a C-speed scan: a regex with look-arounds took 3.4 us a head)."""
    unbroken = head.replace(b"\r\n", b"")
    return len(unbroken.translate(None, _CONTROLS)) != len(unbroken)


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class UpstreamError(Exception):
    """The upstream could not be reached or refused the handshake.

    ``message`` says what happened without the endpoint's address (it may be shown to
    clients); ``str()`` names the endpoint too, for the log.
    """

    def __init__(self, message: str, *, retryable: bool = True,
                 endpoint: Endpoint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.endpoint = endpoint

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.message}" if self.endpoint else self.message


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDict[str]


class UpstreamProtocol(asyncio.Protocol):
    """One upstream connection until its handshake is done: reads the answer's head.

    The relay then takes the transport over (``set_protocol``) and calls ``hand_over``
    for what arrived here after the 101 (an upstream that greets at once) and for a
    connection already lost.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._early: list[bytes] = []
        self._lost = False
        self._lost_exc: BaseException | None = None

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._head.done():
            self._early.append(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        # The limit holds for a whole head too, whether it came in one read or in many.
        if end >= 0 and end + 4 <= MAX_RESPONSE_HEAD:
            head, tail = bytes(self._buffer[: end + 4]), bytes(self._buffer[end + 4 :])
            self._buffer.clear()
            if tail:
                self._early.append(tail)
            self._head.set_result(head)
        elif end >= 0 or len(self._buffer) > MAX_RESPONSE_HEAD:
            self._head.set_exception(
                UpstreamError(f"the response head exceeds {MAX_RESPONSE_HEAD} bytes")
            )
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost, self._lost_exc = True, exc
        if not self._head.done():
            self._head.set_exception(
                UpstreamError("closed the connection during the handshake")
            )

    # -- used by the dialler and the relay -----------------------------------
    async def response_head(self) -> bytes:
        return await self._head

    def hand_over(self, sink: UpstreamSink) -> None:
        """Deliver to the relay, which now owns the transport, what came before."""
        early, self._early = self._early, []
        for chunk in early:
            sink.upstream_data(chunk)
        if self._lost:
            sink.upstream_lost(self._lost_exc)


class UpstreamSink(Protocol):
    """What the relay implements to receive an upstream's bytes and end."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: BaseException | None) -> None: ...


def parse_response_head(head: bytes) -> UpstreamResponse:
    try:
        if has_control(head):
            raise ValueError(head)
        text = head.decode("latin-1")
        status_line, *header_lines = text[:-4].split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (len(status) == 3 and
                                                          status.isdigit()):
            raise ValueError(version)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise ValueError(line)
            headers.add(name, value.strip(" \t"))
        return UpstreamResponse(int(status), headers)
    except ValueError:
        raise UpstreamError("answered with a malformed HTTP response head") from None


def _names(values: list[str]) -> list[str]:
    """The items of comma-separated header values (extension names without parameters)."""
    return [item.split(";")[0].strip().lower()
            for value in values for item in value.split(",") if item.strip()]


def check_answer(response: UpstreamResponse, key: str, protocols: list[str],
                 extensions: list[str]) -> None:
    """Refuse an upstream 101 the client could not accept."""
    if response.headers.getall("Sec-WebSocket-Accept", []) != [accept_for(key)]:
        raise UpstreamError("answered with a wrong Sec-WebSocket-Accept")
    chosen = response.headers.getall("Sec-WebSocket-Protocol", [])
    if len(chosen) > 1 or (chosen and chosen[0] not in protocols):
        raise UpstreamError(f"selected subprotocol {', '.join(chosen)!r}, which the client "
                            "did not offer", retryable=False)
    offered = set(_names(extensions))
    unoffered = [e for e in _names(response.headers.getall("Sec-WebSocket-Extensions", []))
                 if e not in offered]
    if unoffered:
        raise UpstreamError(f"selected extension {unoffered[0]!r}, which the client did not "
                            "offer", retryable=False)


async def open_upstream(
    endpoint: Endpoint,
    request: bytes,
    key: str,
    connect_timeout: float,
    tls: tuple[ssl.SSLContext, str] | None = None,
    offered: tuple[list[str], list[str]] = ([], []),
) -> tuple[asyncio.Transport, UpstreamProtocol, UpstreamResponse]:
    """Connect (over TLS when ``tls`` gives a context and server name), send the
    handshake, and return once the upstream has said 101 with an answer the client
    can accept to its ``offered`` subprotocols and extensions."""
    loop = asyncio.get_running_loop()
    ssl_options = {"ssl": tls[0], "server_hostname": tls[1]} if tls else {}
    connected = False
    try:
        # One deadline, moved once: connecting, then the upstream's answer, each get
        # connect_timeout (one timer per dial, not two).
        async with asyncio.timeout(connect_timeout) as deadline:
            transport, protocol = await loop.create_connection(
                UpstreamProtocol, endpoint.address, endpoint.port, **ssl_options
            )
            connected = True
            try:
                transport.write(request)
                deadline.reschedule(loop.time() + connect_timeout)
                head = await protocol.response_head()
            except BaseException:
                transport.abort()
                raise
    except TimeoutError:
        message = (f"did not answer the handshake within {connect_timeout:g}s" if connected
                   else f"connecting timed out after {connect_timeout:g}s")
        raise UpstreamError(message, endpoint=endpoint) from None
    except UpstreamError as exc:  # closed during the handshake, or a head too big
        exc.endpoint = endpoint
        raise
    except ssl.SSLError as exc:
        raise UpstreamError(f"TLS failed: {exc.reason or exc}", endpoint=endpoint) from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect: {exc.strerror or exc}",
                            endpoint=endpoint) from None
    try:
        response = parse_response_head(head)
        if response.status != 101:
            raise UpstreamError(f"answered the upgrade with HTTP {response.status}",
                                retryable=response.status >= 500)
        check_answer(response, key, *offered)
    except UpstreamError as exc:
        transport.abort()
        exc.endpoint = endpoint
        raise
    except BaseException:
        transport.abort()
        raise
    return transport, protocol, response
