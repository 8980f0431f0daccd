"""The relay: bytes between client and upstream, watched frame by frame, never decoded.

After the handshake the proxy forwards each chunk as it arrives. A FrameInspector
walks the RFC 6455 frame headers in each direction to know message boundaries,
sizes and close frames without unmasking or copying payloads. The proxy writes
frames of its own only to end a session: an unmasked close frame to the client and
a masked one upstream, each at a frame boundary of its stream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol

from .config import Endpoint
from .upstream import UpstreamProtocol

# How long a closing session waits for the peers' close replies before cutting TCP.
CLOSE_GRACE_SECONDS = 5.0

# Close codes the proxy sends (RFC 6455 section 7.4.1 and the IANA registry).
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
BAD_GATEWAY = 1014
ABNORMAL = 1006  # never sent: recorded when a side vanished without a close frame


class FrameInspector:
    """Follows frame headers through one direction of a WebSocket byte stream.

    ``feed`` returns the bytes that may be forwarded: normally the chunk itself (no
    copy). A frame header split across chunks is held back until it is whole, so
    the inspector is at a frame boundary exactly when ``at_boundary`` says so. Once
    ``halt`` is requested, forwarding stops at the next boundary; headers are still
    followed after that, to see the peer's close frame.
    """

    __slots__ = ("_held", "_masked", "_skip", "_stamp", "_tokens", "close_code",
                 "halt_requested", "halted", "max_message_bytes", "message_bytes", "messages",
                 "rate", "violation")

    def __init__(self, *, masked: bool, max_message_bytes: int = 0, rate: float = 0) -> None:
        self._masked = masked
        self._skip = 0  # payload bytes of the current frame still to pass
        self._held = b""  # an incomplete header (or close frame) waiting for more bytes
        self.max_message_bytes = max_message_bytes
        self.message_bytes = 0  # payload bytes of the data message in progress
        self.messages = 0  # complete data messages seen
        self.close_code: int | None = None  # from the first close frame; 1005 when it has none
        self.halt_requested = False
        self.halted = False
        # A limit the stream broke: (close code, reason); forwarding stopped before it.
        self.violation: tuple[int, str] | None = None
        # Messages per second, as a token bucket holding one second's worth.
        self.rate = rate
        self._tokens = max(rate, 1.0)
        self._stamp = time.monotonic()

    def set_limits(self, max_message_bytes: int, rate: float) -> None:
        self.max_message_bytes = max_message_bytes
        if rate != self.rate:
            self.rate, self._tokens = rate, max(rate, 1.0)

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
            self._held = b""
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return b"" if self.halted else data
        self._skip = 0
        cut = -1  # where forwarding stops in this chunk, if it does
        if self.halted:
            cut = 0
        rate = self.rate
        if rate:
            now = time.monotonic()
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
        while True:
            # pos is a frame boundary here
            if cut < 0 and self.halt_requested:
                self.halted = True
                cut = pos
            if pos == n:
                break
            if n - pos < 2:
                self._held = data[pos:]
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            header = 2 + (b1 >> 5 & 4) + (2 if length == 126 else 8 if length == 127 else 0)
            if n - pos < header:
                self._held = data[pos:]
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = b0 & 0x0F
            if opcode & 0x08:
                if opcode == 0x08 and self.close_code is None:
                    if n - pos < header + length:
                        self._held = data[pos:]
                        break
                    self.close_code = self._read_close_code(data, pos, header, length, b1 & 0x80)
            else:
                if opcode:  # a text or binary frame starts a new message
                    self.message_bytes = 0
                    if rate and cut < 0:
                        if self._tokens < 1:
                            self._violate(POLICY_VIOLATION, "message rate exceeded")
                            cut = pos
                        self._tokens -= 1
                self.message_bytes += length
                limit = self.max_message_bytes
                if limit and self.message_bytes > limit and cut < 0:
                    self._violate(MESSAGE_TOO_BIG, "message too big")
                    cut = pos
                if b0 & 0x80:
                    self.messages += 1
            end = pos + header + length
            if end > n:
                self._skip = end - n
                break
            pos = end
        if cut >= 0:
            return data[:cut]
        if self._held:
            return data[: n - len(self._held)]
        return data

    def _violate(self, code: int, reason: str) -> None:
        self.violation = (code, reason)
        self.halted = self.halt_requested = True

    @staticmethod
    def _read_close_code(data: bytes, pos: int, header: int, length: int, masked: int) -> int:
        if length < 2:
            return 1005
        start = pos + header
        hi, lo = data[start], data[start + 1]
        if masked:
            hi ^= data[start - 4]
            lo ^= data[start - 3]
        return hi << 8 | lo


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + body


class Session:
    """One relayed WebSocket session.

    aiohttp feeds the client's bytes to ``feed_data``/``feed_eof`` (the session is
    installed with ``request.protocol.set_parser``); the upstream connection feeds
    ``upstream_data``/``upstream_lost``. Each side's write buffer pauses reading on
    the other side, so a slow reader never makes the proxy buffer without bound.
    """

    def __init__(
        self,
        *,
        route_key: str,
        endpoint: Endpoint,
        client_transport: asyncio.Transport,
        client_protocol: BaseProtocol,
        client_writer: AbstractStreamWriter,
        upstream_transport: asyncio.Transport,
        upstream_protocol: UpstreamProtocol,
        on_end: Callable[[Session], None],
        max_message_bytes: int = 0,
        messages_per_second: float = 0,
    ) -> None:
        self.route_key = route_key
        self.endpoint = endpoint
        # Who and what, for the runtime's checks when a new config arrives.
        self.host = ""
        self.path = ""
        self.consumer_key: str | None = None
        self.username: str | None = None
        self.credential_fingerprint: str | None = None
        self.started = time.monotonic()
        self.c2u = FrameInspector(masked=True, max_message_bytes=max_message_bytes,
                                  rate=messages_per_second)
        self.u2c = FrameInspector(masked=False, max_message_bytes=max_message_bytes)
        self.bytes_c2u = 0
        self.bytes_u2c = 0
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._client = client_transport
        self._client_protocol = client_protocol
        self._client_writer = client_writer
        self._upstream = upstream_transport
        self._upstream_protocol = upstream_protocol
        self._client_open = True
        self._upstream_open = True
        self._closing = False
        self._sent_to_client = False
        self._sent_to_upstream = False
        self._proxy_frames: tuple[bytes, bytes] | None = None
        self._draining_client: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._on_end = on_end
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set_limits(self, max_message_bytes: int, messages_per_second: float) -> None:
        self.c2u.set_limits(max_message_bytes, messages_per_second)
        self.u2c.set_limits(max_message_bytes, 0)

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._upstream_protocol.attach(self)

    # -- client -> upstream (aiohttp's payload-parser interface) ---------------
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.bytes_c2u += len(data)
        inspector = self.c2u
        out = inspector.feed(data)
        if out and self._upstream_open:
            self._upstream.write(out)
        if inspector.close_code is not None:
            self._saw_close("client", inspector.close_code)
        if inspector.halted:
            self._closing_step()
        return False, b""

    def feed_eof(self) -> None:
        if not self._client_open:
            return
        self._client_open = False
        self._saw_end("client")
        if self._upstream_open:
            self._upstream.close()
        self._maybe_done()

    # -- upstream -> client ------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self.bytes_u2c += len(data)
        inspector = self.u2c
        out = inspector.feed(data)
        if out and self._client_open:
            self._client.write(out)
            if self._client_protocol.writing_paused and self._draining_client is None:
                self._upstream.pause_reading()
                self._draining_client = asyncio.ensure_future(self._wait_client_drain())
        if inspector.close_code is not None:
            self._saw_close("upstream", inspector.close_code)
        if inspector.halted:
            self._closing_step()

    def upstream_lost(self, exc: BaseException | None) -> None:
        if not self._upstream_open:
            return
        self._upstream_open = False
        self._saw_end("upstream")
        if self._client_open:
            if self.u2c.close_code is None and not self._closing:
                # The upstream vanished without a close frame: tell the client why.
                self.close(BAD_GATEWAY, "upstream connection lost")
            if self._closing and not self._sent_to_client:
                self._client.abort()  # mid-frame with no way to finish it
            else:
                self._client.close()
        self._maybe_done()

    def upstream_pause_writing(self) -> None:
        if self._client_open:
            self._client.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self._client_open:
            self._client.resume_reading()

    async def _wait_client_drain(self) -> None:
        try:
            await self._client_writer.drain()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._draining_client = None
            if self._upstream_open:
                self._upstream.resume_reading()

    # -- ending ------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """End the session from the proxy: a close frame to each side, at a frame boundary."""
        if self._closing or self.done.done():
            return
        self._closing = True
        if self.closed_by is None:
            self.closed_by, self.close_code, self.close_reason = "proxy", code, reason
        self._proxy_frames = (
            close_frame(code, reason, masked=False),
            close_frame(code, reason, masked=True),
        )
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(CLOSE_GRACE_SECONDS, self.abort)
        for inspector in (self.u2c, self.c2u):
            inspector.halt_requested = True
            if inspector.at_boundary:
                inspector.halted = True
        self._closing_step()

    def _closing_step(self) -> None:
        """Advance a closing session: send each side its close frame once its stream
        has reached a frame boundary, and end each connection once that side answered."""
        if not self._closing:  # an inspector halted on its own: the stream broke a limit
            violation = self.c2u.violation or self.u2c.violation
            assert violation is not None
            self.close(*violation)
            return
        assert self._proxy_frames is not None
        if self.u2c.halted and not self._sent_to_client:
            self._sent_to_client = True
            if self._client_open:
                self._client.write(self._proxy_frames[0])
        if self.c2u.halted and not self._sent_to_upstream:
            self._sent_to_upstream = True
            if self._upstream_open:
                self._upstream.write(self._proxy_frames[1])
        if self._sent_to_client and self.c2u.close_code is not None and self._client_open:
            self._client.close()
        if self._sent_to_upstream and self.u2c.close_code is not None and self._upstream_open:
            self._upstream.close()

    def abort(self) -> None:
        """Cut both connections now (a peer that never answered a close frame)."""
        if self._client_open:
            self._client.abort()
        if self._upstream_open:
            self._upstream.abort()

    def _saw_close(self, side: str, code: int) -> None:
        if self.closed_by is None:
            self.closed_by, self.close_code = side, code

    def _saw_end(self, side: str) -> None:
        if self.closed_by is None:
            self.closed_by, self.close_code = side, ABNORMAL

    def _maybe_done(self) -> None:
        if self._client_open or self._upstream_open or self.done.done():
            return
        if self._grace is not None:
            self._grace.cancel()
        self.done.set_result(None)
        self._on_end(self)
