"""Dialling an upstream endpoint and completing its WebSocket handshake.

The client's ``Sec-WebSocket-Key`` is passed through, so the upstream's
``Sec-WebSocket-Accept``, subprotocol and extensions can be returned to the client
as they are (permessage-deflate then runs end to end, and the proxy never inflates
a message). The handshake completes here before the client gets its 101.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from dataclasses import dataclass
from typing import Protocol, cast

from multidict import CIMultiDict

from .config import Endpoint

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16 * 1024


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


class UpstreamError(Exception):
    """The upstream could not be reached or refused the handshake."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDict[str]


class UpstreamProtocol(asyncio.Protocol):
    """One upstream connection: reads the handshake answer, then hands bytes to a sink.

    Bytes that arrive after the 101 but before a sink is attached (an upstream that
    greets at once) are kept and delivered on attach.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._sink: UpstreamSink | None = None
        self._early: list[bytes] = []
        self._lost = False
        self._lost_exc: BaseException | None = None

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.upstream_data(data)
        elif not self._head.done():
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, tail = bytes(self._buffer[: end + 4]), bytes(self._buffer[end + 4 :])
                self._buffer.clear()
                if tail:
                    self._early.append(tail)
                self._head.set_result(head)
            elif len(self._buffer) > MAX_RESPONSE_HEAD:
                self._head.set_exception(
                    UpstreamError(f"upstream's response head exceeds {MAX_RESPONSE_HEAD} bytes")
                )
                assert self.transport is not None
                self.transport.abort()
        else:
            self._early.append(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost, self._lost_exc = True, exc
        if not self._head.done():
            self._head.set_exception(
                UpstreamError("upstream closed the connection during the handshake")
            )
        if self._sink is not None:
            self._sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_resume_writing()

    # -- used by the dialler and the relay -----------------------------------
    async def response_head(self) -> bytes:
        return await self._head

    def attach(self, sink: UpstreamSink) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink.upstream_data(chunk)
        if self._lost:
            sink.upstream_lost(self._lost_exc)


class UpstreamSink(Protocol):
    """What the relay implements to receive an upstream's bytes and events."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self, exc: BaseException | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


def build_request(target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_response_head(head: bytes) -> UpstreamResponse:
    try:
        text = head.decode("latin-1")
        status_line, *header_lines = text.split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in header_lines:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(line)
            headers.add(name.strip(), value.strip())
        return UpstreamResponse(int(status), headers)
    except ValueError:
        raise UpstreamError("upstream answered with a malformed HTTP response") from None


async def open_upstream(
    endpoint: Endpoint,
    request: bytes,
    key: str,
    connect_timeout: float,
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> tuple[asyncio.Transport, UpstreamProtocol, UpstreamResponse]:
    """Connect (over TLS when ``tls`` gives a context and server name), send the
    handshake, and return once the upstream has said 101."""
    loop = asyncio.get_running_loop()
    ssl_options = {"ssl": tls[0], "server_hostname": tls[1]} if tls else {}
    try:
        async with asyncio.timeout(connect_timeout):
            transport, protocol = await loop.create_connection(
                UpstreamProtocol, endpoint.address, endpoint.port, **ssl_options
            )
    except TimeoutError:
        raise UpstreamError(
            f"connecting to {endpoint} timed out after {connect_timeout:g}s"
        ) from None
    except ssl.SSLError as exc:
        raise UpstreamError(f"TLS with {endpoint} failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {endpoint}: {exc.strerror or exc}") from None
    try:
        transport.write(request)
        async with asyncio.timeout(connect_timeout):
            head = await protocol.response_head()
        response = parse_response_head(head)
        if response.status != 101:
            raise UpstreamError(
                f"{endpoint} answered the upgrade with HTTP {response.status}",
                retryable=response.status >= 500,
            )
        if response.headers.get("Sec-WebSocket-Accept") != accept_for(key):
            raise UpstreamError(f"{endpoint} answered with a wrong Sec-WebSocket-Accept")
    except TimeoutError:
        transport.abort()
        raise UpstreamError(
            f"{endpoint} did not answer the handshake within {connect_timeout:g}s"
        ) from None
    except BaseException:
        transport.abort()
        raise
    return transport, protocol, response
