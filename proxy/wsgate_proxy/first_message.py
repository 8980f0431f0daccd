"""FirstMessage mode: reading the auth message a client sends right after the upgrade.

For clients that can set nothing on the handshake. The proxy completes the upgrade
itself, and the client's first message must be one text frame holding a JSON object
``{"type": "auth", ...}`` with a credential. Until it is verified nothing is dialled
and nothing is forwarded; the bytes after it go to the session once there is one.

What the proxy holds meanwhile is bounded: the auth message itself (at most
MAX_AUTH_MESSAGE_BYTES, refused as soon as its header declares more), and once it is
read, reading from the client is paused until the session starts, so a client that
streams on while the verdict or the dial is pending holds at most one socket read
(a few hundred KiB) here, not everything it sends.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from .frames import Opcode, ProtocolError, read_frame, text_frame

if TYPE_CHECKING:
    from .relay import Session

MAX_AUTH_MESSAGE_BYTES = 16 * 1024


class AuthMessageError(Exception):
    """The client's first message is not a readable auth message (closed with 4401)."""


class FirstMessageReader:
    """Where the client's bytes go after the 101 until the session takes over."""

    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client
        self._buffer = bytearray()
        self._message: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future())
        self._session: Session | None = None
        self._paused = False
        self.client_gone = False

    async def message(self) -> dict[str, Any]:
        return await self._message

    def attach(self, session: Session) -> None:
        """From now on the session gets the client's bytes, starting with any left over."""
        self._session = session
        rest, self._buffer = bytes(self._buffer), bytearray()
        if rest:
            session.feed_data(rest)
        if self.client_gone:
            session.feed_eof()
        elif self._paused:
            self._paused = False
            self._client.resume_reading()

    def feed_data(self, data: bytes) -> None:
        if self._session is not None:
            self._session.feed_data(data)
            return
        self._buffer += data
        if not self._message.done():
            self._parse()
        if self._message.done() and not self._paused and not self.client_gone:
            # Whatever comes next waits in the client's socket, not here.
            self._paused = True
            self._client.pause_reading()

    def feed_eof(self) -> None:
        self.client_gone = True
        if self._session is not None:
            self._session.feed_eof()
        elif not self._message.done():
            self._message.set_exception(AuthMessageError("closed before authenticating"))

    def _parse(self) -> None:
        try:
            found = read_frame(self._buffer, MAX_AUTH_MESSAGE_BYTES)
        except ProtocolError:
            self._fail(f"the auth message must be one text frame of at most "
                       f"{MAX_AUTH_MESSAGE_BYTES} bytes")
            return
        if found is None:
            return
        frame, size = found
        del self._buffer[:size]
        if frame.opcode == Opcode.CLOSE:
            self._fail("closed before authenticating")
            return
        if frame.opcode != Opcode.TEXT or not frame.fin or not frame.masked:
            self._fail("the first message must be a text auth message")
            return
        message = parse_auth_message(frame.payload)
        if message is None:
            self._fail('the first message must be JSON {"type": "auth", ...}')
            return
        self._message.set_result(message)

    def _fail(self, reason: str) -> None:
        self._buffer.clear()
        self._message.set_exception(AuthMessageError(reason))


def parse_auth_message(payload: bytes) -> dict[str, Any] | None:
    """The auth message a text payload holds, or None when it is something else."""
    if b'"auth"' not in payload:  # most messages: no JSON parsing
        return None
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or message.get("type") != "auth":
        return None
    return message


def auth_answer(ok: bool, *, valid_until: float | None = None, error: str = "") -> bytes:
    """The proxy's answer to an auth message: ``{"type": "auth", "ok": true}`` with
    ``expiresAt`` (unix seconds) when the credential has an end, or ``"ok": false`` with
    the ``error``."""
    answer: dict[str, Any] = {"type": "auth", "ok": ok}
    if ok and valid_until is not None:
        answer["expiresAt"] = int(valid_until)
    if not ok:
        answer["error"] = error
    return text_frame(json.dumps(answer))
