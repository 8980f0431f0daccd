"""The relay: bytes between client and upstream, watched frame by frame, never decoded.

After the handshake the proxy forwards each chunk as it arrives. A FrameInspector
(frames.py) walks the RFC 6455 frame headers in each direction to know message
boundaries, sizes and close frames without unmasking or copying payloads. The proxy
writes frames of its own only to end a session (an unmasked close frame to the client
and a masked one upstream) and, in FirstMessage mode, to answer an auth message sent
mid-session; each at a frame boundary of its stream. A side that broke the protocol
gets its close frame and its connection closed at once: its stream can no longer be
read, so no close reply from it will be recognised.

FirstMessage mode's mid-session auth messages (a client extending its session with a
new credential, first_message.py) are the one thing read out of the client's stream:
its small unfragmented text frames are held until whole and unmasked, and an auth
message among them is taken out of the stream and handed to ``on_auth_message``; every
other frame is forwarded untouched.

Once a session starts it owns both connections: each transport's protocol is swapped
(``set_protocol``) for a ``_Side`` whose callbacks are the session's own methods, so a
chunk goes from the event loop to ``feed_data``/``upstream_data`` with no adapter in
between (the listener's connection, the dialler's protocol), and each side's
``pause_writing``/``resume_writing`` pauses and resumes reading on the other side: no
check after each write, no drain task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import Endpoint
from .first_message import MAX_AUTH_MESSAGE_BYTES, parse_auth_message
from .frames import CloseCode, FrameInspector, ProtocolError, close_frame, read_frame
from .upstream import UpstreamProtocol

if TYPE_CHECKING:
    from .handshake import Handshake
    from .limits import Admission

# How long a closing session waits for the peers' close replies before cutting TCP.
CLOSE_GRACE_SECONDS = 5.0
# Frames of the proxy's own waiting for the upstream's stream to reach a frame boundary
# (auth answers): more means a client sending auth messages faster than they can be
# answered, and its session is closed.
MAX_WAITING_FRAMES = 16


class _Side(asyncio.Protocol):
    """A connection's protocol whose callbacks are a session's bound methods."""

    __slots__ = ("connection_lost", "data_received", "pause_writing", "resume_writing")

    def __init__(self, data_received: Callable[[bytes], object],
                 connection_lost: Callable[[BaseException | None], None],
                 pause_writing: Callable[[], None], resume_writing: Callable[[], None]) -> None:
        self.data_received = data_received  # type: ignore[method-assign]
        self.connection_lost = connection_lost  # type: ignore[method-assign]
        self.pause_writing = pause_writing  # type: ignore[method-assign]
        self.resume_writing = resume_writing  # type: ignore[method-assign]


class Session:
    """One relayed WebSocket session.

    The client's bytes arrive at ``feed_data`` (first those the listener read after the
    handshake's head; then straight from the transport), its end at ``feed_eof``; the
    upstream's at ``upstream_data``/``upstream_lost``. Each side's
    write buffer pauses reading on the other side, so a slow reader never makes the
    proxy buffer without bound.
    """

    # Slots: a pod holds tens of thousands of sessions, mostly idle.
    __slots__ = ("_answers_backed_up", "_client", "_client_full", "_client_open",
                 "_client_protocol", "_closing", "_grace", "_on_auth_message", "_on_end",
                 "_proxy_frames", "_sent_to_client", "_sent_to_upstream", "_to_client",
                 "_upstream", "_upstream_full", "_upstream_open", "_upstream_protocol",
                 "admission", "bytes_c2u", "bytes_u2c", "c2u", "close_code", "close_reason",
                 "closed_by", "consumer_key", "credential_fingerprint",
                 "credential_valid_until", "done", "endpoint", "handshake", "host", "path",
                 "route_key", "started", "u2c", "username")

    def __init__(
        self,
        handshake: Handshake,
        endpoint: Endpoint,
        *,
        client_transport: asyncio.Transport,
        upstream_transport: asyncio.Transport,
        upstream_protocol: UpstreamProtocol,
        on_end: Callable[[Session], None],
        on_auth_message: Callable[[Session, dict[str, Any]], None] | None = None,
    ) -> None:
        self.handshake = handshake
        self.endpoint = endpoint
        # Who and what, for the runtime's checks when a new config arrives.
        route = handshake.route
        self.route_key = route.key
        self.host = handshake.host
        self.path = handshake.path
        identity = handshake.who.identity
        self.consumer_key = identity.key if identity else None
        self.username = identity.username if identity else None
        self.credential_fingerprint = identity.fingerprint if identity else None
        # When the credential that opened the session (or renewed it since) ends: unix
        # time, None for none (expiry.py watches it).
        self.credential_valid_until = handshake.who.valid_until
        self.started = time.monotonic()
        max_message_bytes = route.limits.max_message_bytes or 0
        messages_per_second = route.limits.messages_per_second or 0
        self._on_auth_message = on_auth_message
        self.c2u = FrameInspector(masked=True, max_message_bytes=max_message_bytes,
                                  rate=messages_per_second,
                                  capture=MAX_AUTH_MESSAGE_BYTES if on_auth_message else 0)
        self.u2c = FrameInspector(masked=False, max_message_bytes=max_message_bytes)
        self.bytes_c2u = 0
        self.bytes_u2c = 0
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._client = client_transport
        self._upstream = upstream_transport
        self._upstream_protocol: UpstreamProtocol | None = upstream_protocol
        self._client_open = True
        self._upstream_open = True
        self._closing = False
        self._sent_to_client = False
        self._sent_to_upstream = False
        self._proxy_frames: tuple[bytes, bytes] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._to_client: list[bytes] = []  # frames of the proxy's own, for a boundary
        # Why reading from the client is paused: the upstream's write buffer is full, or
        # the proxy's own answers to the client are (auth messages never reach the
        # upstream, so its back-pressure alone would not slow their sender).
        self._upstream_full = False
        self._answers_backed_up = False
        self._client_full = False  # the client's write buffer is full
        self._on_end = on_end
        # Its place under the connection limits (runtime.Held.hand_over), given back when
        # it ends.
        self.admission: Admission | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set_limits(self, max_message_bytes: int, messages_per_second: float) -> None:
        self.c2u.set_limits(max_message_bytes, messages_per_second)
        self.u2c.set_limits(max_message_bytes, 0)

    @property
    def closing(self) -> bool:
        return self._closing

    def take_over(self) -> None:
        """Own both connections, before a byte is written on either: asyncio tells a
        transport's protocol once that its write buffer went over the high-water mark,
        and a pause told to the protocol before this one would be lost (the other side
        never paused, the buffer unbounded)."""
        self._upstream.set_protocol(_Side(self.upstream_data, self.upstream_lost,
                                          self._pause_client, self._resume_client))
        self._client.set_protocol(_Side(self.feed_data, self._client_lost,
                                        self._pause_upstream, self._resume_upstream))

    def start(self) -> None:
        """Relay what the upstream sent with its 101 (after ``take_over``, and after the
        client's bytes read with the handshake were handed over by the listener or the
        auth message's reader)."""
        assert self._upstream_protocol is not None
        self._upstream_protocol.hand_over(self)
        self._upstream_protocol = None  # done with: not held for the session's lifetime
        if (self._upstream_full or self._answers_backed_up) and self._client_open:
            # The listener and the reader resume reading the client once they fed it.
            self._client.pause_reading()

    # -- client -> upstream ------------------------------------------------------
    def feed_data(self, data: bytes) -> None:
        self.bytes_c2u += len(data)
        inspector = self.c2u
        out = inspector.feed(data)
        if inspector.captured:
            out = self._take_auth_messages(out, inspector.captured)
        if out and self._upstream_open:
            self._upstream.write(out)
        if inspector.close_code is not None:
            self._saw_close("client", inspector.close_code)
        if inspector.halted:
            self._closing_step()

    def _client_lost(self, _exc: BaseException | None) -> None:
        self.feed_eof()

    def feed_eof(self) -> None:
        if not self._client_open:
            return
        self._client_open = False
        self._saw_end("client")
        if self._upstream_open:
            self._upstream.close()
        self._maybe_done()

    def _take_auth_messages(self, out: bytes, frames: list[tuple[int, int]]) -> bytes:
        """``out`` without the auth messages among these frames (each handed on)."""
        kept, last = [], 0
        for start, end in frames:
            try:
                found = read_frame(out[start:end], MAX_AUTH_MESSAGE_BYTES)
            except ProtocolError:
                continue
            message = parse_auth_message(found[0].payload) if found is not None else None
            if message is None:
                continue
            if self._closing:  # the one before closed the session (a flood)
                break
            kept.append(out[last:start])
            last = end
            assert self._on_auth_message is not None
            self._on_auth_message(self, message)
        if not kept:
            return out
        kept.append(out[last:])
        return b"".join(kept)

    def send_to_client(self, frame: bytes) -> None:
        """Write a frame of the proxy's own to the client between two of the upstream's
        frames: now, when its stream is at a frame boundary, else at the next one."""
        if not self._client_open or self._closing:
            return
        if self.u2c.at_boundary and not self._to_client:
            self._client.write(frame)
            self._hold_client_if_backed_up()
            return
        if len(self._to_client) >= MAX_WAITING_FRAMES:
            self.close(CloseCode.POLICY_VIOLATION, "auth messages sent faster than answered")
            return
        self._to_client.append(frame)
        self.u2c.pause_requested = True

    def _hold_client_if_backed_up(self) -> None:
        """Stop reading the client while the proxy's answers to it are not read: each
        auth message it sends is answered, so reading on would buffer answers without
        bound. Reading resumes once the client drained them."""
        if not self._client_full or self._answers_backed_up:
            return
        self._answers_backed_up = True
        self._client.pause_reading()

    # -- upstream -> client ------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self.bytes_u2c += len(data)
        inspector = self.u2c
        out = inspector.feed(data)
        while inspector.paused:  # at a boundary, with frames of the proxy's own to send
            inspector.paused = False
            if out and self._client_open:
                self._client.write(out)
            frames, self._to_client = self._to_client, []
            if self._client_open and not self._closing:
                self._client.write(b"".join(frames))
                self._hold_client_if_backed_up()
            out = inspector.feed(b"")
        if out and self._client_open:
            self._client.write(out)
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
                self.close(CloseCode.BAD_GATEWAY, "upstream connection lost")
            if self._closing and not self._sent_to_client:
                self._client.abort()  # mid-frame with no way to finish it
            else:
                self._client.close()
        self._maybe_done()

    # -- flow control: a side that cannot take more stops the other side's reading ---
    def _pause_client(self) -> None:  # the upstream's write buffer is full
        self._upstream_full = True
        if self._client_open:
            self._client.pause_reading()

    def _resume_client(self) -> None:
        self._upstream_full = False
        if self._client_open and not self._answers_backed_up:
            self._client.resume_reading()

    def _pause_upstream(self) -> None:  # the client's write buffer is full
        self._client_full = True
        if self._upstream_open:
            self._upstream.pause_reading()

    def _resume_upstream(self) -> None:
        self._client_full = False
        if self._upstream_open:
            self._upstream.resume_reading()
        if self._answers_backed_up:
            self._answers_backed_up = False
            if self._client_open and not self._upstream_full:
                self._client.resume_reading()

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
        c2u, u2c = self.c2u, self.u2c
        if self._sent_to_client and self._client_open:
            if c2u.close_code is not None:
                self._client.close()
            elif c2u.broken:
                _half_close(self._client)
        if self._sent_to_upstream and self._upstream_open:
            if u2c.close_code is not None:
                self._upstream.close()
            elif u2c.broken:
                _half_close(self._upstream)

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
            self.closed_by, self.close_code = side, CloseCode.ABNORMAL_CLOSURE

    def _maybe_done(self) -> None:
        if self._client_open or self._upstream_open or self.done.done():
            return
        if self._grace is not None:
            self._grace.cancel()
        self.done.set_result(None)
        self._on_end(self)


def _half_close(transport: asyncio.Transport) -> None:
    """End a side that broke the protocol: its close frame is sent, no close reply from
    it can be recognised any more, so the proxy shuts its own direction down and drops
    what still arrives until the side leaves (or the grace period cuts it). Closing at
    once would reset a socket with unread bytes and lose the close frame."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
