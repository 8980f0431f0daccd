"""Everything about WebSocket frames (RFC 6455 section 5), and nothing else.

- ``Opcode`` and ``CloseCode``: the numbers, including the proxy's own 4401/4403;
- ``FrameInspector``: follows frame headers through one direction of a byte stream
  without unmasking or copying payloads (the relay's hot path); it can hold small text
  frames whole until they are looked at (FirstMessage mode's mid-session auth
  messages) and stop at a frame boundary for the proxy to insert a frame of its own;
- ``read_frame``: reads one whole frame from a buffer, unmasked (FirstMessage mode's
  auth message);
- ``apply_mask``, ``close_frame``, ``text_frame``: the frames the proxy writes itself;
- ``close_code_label``: a close code as a metric label from a small fixed set.

A control frame (close, ping, pong, reserved 0xB-0xF) that declares more than 125
bytes or is fragmented is a protocol error (RFC 6455 section 5.5): the inspector
stops forwarding before it, never buffers it, and stops reading that stream.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass

MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON_BYTES = MAX_CONTROL_PAYLOAD - 2


class Opcode(enum.IntEnum):
    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close codes: RFC 6455 section 7.4.1, the IANA registry, and the proxy's own."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never sent: a close frame without a code
    ABNORMAL_CLOSURE = 1006  # never sent: a side vanished without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never sent
    # FirstMessage mode's refusals, after the upgrade: HTTP's 401 and 403 in the
    # private range (4000-4999).
    AUTH_FAILED = 4401
    AUTH_FORBIDDEN = 4403


_NAMED_CODES = frozenset(int(c) for c in CloseCode if c < 3000)


def close_code_label(code: int | None) -> str:
    """A close code as a metric label value: a peer chooses its codes, so they are
    grouped into a fixed set (the RFC's and IANA's named codes, '3xxx' for codes
    registered with IANA, '4xxx' for private ones, 'invalid' for the rest)."""
    if code is None:
        return "none"
    if code in _NAMED_CODES:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "invalid"


class FrameInspector:
    """Follows frame headers through one direction of a WebSocket byte stream.

    ``feed`` returns the bytes that may be forwarded: normally the chunk itself (no
    copy). A frame header split across chunks is held back until it is whole, so
    the inspector is at a frame boundary exactly when ``at_boundary`` says so. Once
    ``halt`` is requested, forwarding stops at the next boundary; headers are still
    followed after that, to see the peer's close frame. A stream that breaks a limit
    sets ``violation`` and halts before the offending frame; one that breaks the
    protocol (a control frame over 125 bytes or fragmented) is also ``broken``: its
    headers cannot be trusted any more, so nothing of it is read after that.

    The header walk is written out in ``feed`` rather than calling a helper per frame:
    this is the relay's hot path.
    """

    __slots__ = ("_held", "_masked", "_skip", "_stamp", "_tokens", "broken", "capture",
                 "captured", "close_code", "halt_requested", "halted", "max_message_bytes",
                 "message_bytes", "messages", "pause_requested", "paused", "rate", "violation")

    def __init__(self, *, masked: bool, max_message_bytes: int = 0, rate: float = 0,
                 capture: int = 0) -> None:
        self._masked = masked
        self._skip = 0  # payload bytes of the current frame still to pass
        # An incomplete header (or close frame, at most 139 bytes) waiting for more bytes.
        self._held = b""
        self.max_message_bytes = max_message_bytes
        self.message_bytes = 0  # payload bytes of the data message in progress
        self.messages = 0  # complete data messages seen
        self.close_code: int | None = None  # from the first close frame; 1005 when it has none
        self.halt_requested = False
        self.halted = False
        self.broken = False
        # A rule the stream broke: (close code, reason); forwarding stopped before it.
        self.violation: tuple[int, str] | None = None
        # Messages per second, as a token bucket holding one second's worth.
        self.rate = rate
        self._tokens = max(rate, 1.0)
        self._stamp = time.monotonic()
        # Unfragmented text frames of at most ``capture`` payload bytes are held until
        # whole, and ``feed`` lists where each lies in what it returns (start, end), so
        # that the caller can look at them before they are forwarded. 0: off.
        self.capture = capture
        self.captured: list[tuple[int, int]] = []
        # Stop at the next frame boundary (``paused`` then says so; what follows is kept
        # and comes out of the next ``feed``, even an empty one): the proxy writes a frame
        # of its own there.
        self.pause_requested = False
        self.paused = False

    def set_limits(self, max_message_bytes: int, rate: float) -> None:
        self.max_message_bytes = max_message_bytes
        if rate != self.rate:
            self.rate, self._tokens = rate, max(rate, 1.0)

    @property
    def at_boundary(self) -> bool:
        return self._skip == 0

    def feed(self, data: bytes) -> bytes:
        # The fast path: a chunk that is exactly one whole data frame, with no rate, no
        # capture, nothing held, pending or halted (a relayed message in a round trip,
        # most chunks). It does what the walk below does for that chunk, in fewer steps;
        # anything else, or a frame that breaks the size limit, takes the walk.
        if not (self._held or self._skip or self.halt_requested or self.pause_requested
                or self.rate or self.capture):
            n = len(data)
            if n > 1:
                b0 = data[0]
                b1 = data[1]
                length = b1 & 0x7F
                header = 2 + (b1 >> 5 & 4)
                if length > 125:
                    if length == 127 or n < 4:  # a 64-bit length, or a cut one: the walk
                        length = n
                    else:
                        header += 2
                        length = data[2] << 8 | data[3]
                if not b0 & 0x08 and n == header + length:
                    size = length if b0 & 0x0F else self.message_bytes + length
                    limit = self.max_message_bytes
                    if not limit or size <= limit:
                        self.message_bytes = size
                        if b0 & 0x80:
                            self.messages += 1
                        return data
        if self.broken:
            return b""
        if self.captured:
            self.captured = []
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
        capture = self.capture
        while True:
            # pos is a frame boundary here
            if cut < 0 and self.halt_requested:
                self.halted = True
                cut = pos
            if cut < 0 and self.pause_requested:
                self.pause_requested = False
                self.paused = True
                self._held = data[pos:]
                return data[:pos]
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
                if length > MAX_CONTROL_PAYLOAD or not b0 & 0x80:
                    self._break("control frame longer than 125 bytes or fragmented")
                    if cut < 0:
                        cut = pos
                    break
                if opcode == 0x08 and self.close_code is None:
                    if n - pos < header + length:
                        self._held = data[pos:]
                        break
                    self.close_code = self._read_close_code(data, pos, header, length, b1 & 0x80)
            else:
                if capture and opcode == 0x01 and b0 & 0x80 and length <= capture:
                    if n - pos < header + length:  # held until whole, then looked at
                        self._held = data[pos:]
                        break
                    self.captured.append((pos, pos + header + length))
                if opcode:  # a text or binary frame starts a new message
                    self.message_bytes = 0
                    if rate and cut < 0:
                        if self._tokens < 1:
                            self._violate(CloseCode.POLICY_VIOLATION, "message rate exceeded")
                            cut = pos
                        self._tokens -= 1
                self.message_bytes += length
                limit = self.max_message_bytes
                if limit and self.message_bytes > limit and cut < 0:
                    self._violate(CloseCode.MESSAGE_TOO_BIG, "message too big")
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

    def _break(self, reason: str) -> None:
        if self.violation is None:
            self.violation = (CloseCode.PROTOCOL_ERROR, reason)
        self.broken = self.halted = self.halt_requested = True
        self._held = b""
        self._skip = 0

    @staticmethod
    def _read_close_code(data: bytes, pos: int, header: int, length: int, masked: int) -> int:
        if length < 2:
            return CloseCode.NO_STATUS_RCVD
        start = pos + header
        hi, lo = data[start], data[start + 1]
        if masked:
            hi ^= data[start - 4]
            lo ^= data[start - 3]
        return hi << 8 | lo


class ProtocolError(ValueError):
    """Bytes that are not a frame the reader accepts."""


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    masked: bool
    payload: bytes  # unmasked


def read_frame(buffer: bytes | bytearray, max_payload: int) -> tuple[Frame, int] | None:
    """The first whole frame in ``buffer`` and the bytes it took, or None while it is
    incomplete. A frame that declares more than ``max_payload`` bytes (or a control
    frame more than 125) raises ProtocolError as soon as its header is read, so a
    caller never holds more than ``max_payload`` plus a header."""
    n = len(buffer)
    if n < 2:
        return None
    b0, b1 = buffer[0], buffer[1]
    length = b1 & 0x7F
    masked = bool(b1 & 0x80)
    header = 2 + (4 if masked else 0) + (2 if length == 126 else 8 if length == 127 else 0)
    if n < header:
        return None
    if length == 126:
        length = int.from_bytes(buffer[2:4], "big")
    elif length == 127:
        length = int.from_bytes(buffer[2:10], "big")
    opcode = b0 & 0x0F
    if opcode & 0x08 and (length > MAX_CONTROL_PAYLOAD or not b0 & 0x80):
        raise ProtocolError("a control frame longer than 125 bytes or fragmented")
    if length > max_payload:
        raise ProtocolError(f"a frame of {length} bytes exceeds {max_payload}")
    if n < header + length:
        return None
    payload = bytes(buffer[header : header + length])
    if masked:
        payload = apply_mask(payload, bytes(buffer[header - 4 : header]))
    return Frame(bool(b0 & 0x80), opcode, masked, payload), header + length


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (masking and unmasking alike)."""
    n = len(data)
    if not n:
        return b""
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little")


def _frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, (0x80 if masked else 0) | 127)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def close_reason(reason: str) -> bytes:
    """``reason`` as UTF-8, cut to the 123 bytes a close frame holds, never inside a
    character."""
    encoded = reason.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return encoded
    return encoded[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore").encode()


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    return _frame(Opcode.CLOSE, code.to_bytes(2, "big") + close_reason(reason), masked)


def text_frame(text: str, *, masked: bool = False) -> bytes:
    """A text frame (unmasked by default: server to client)."""
    return _frame(Opcode.TEXT, text.encode(), masked)
