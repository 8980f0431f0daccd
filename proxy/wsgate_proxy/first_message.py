"""FirstMessage mode: reading the auth message a client sends right after the upgrade.

For clients that can set nothing on the handshake. The proxy completes the upgrade
itself, and the client's first message must be one text frame holding a JSON object
``{"type": "auth", ...}`` with a credential. Until it is verified nothing is dialled
and nothing is forwarded; the bytes after it go to the session once there is one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .relay import Session

MAX_AUTH_MESSAGE_BYTES = 16 * 1024
AUTH_FAILED = 4401
AUTH_FORBIDDEN = 4403


class AuthMessageError(Exception):
    """The client's first message is not a readable auth message (closed with 4401)."""


class FirstMessageReader:
    """aiohttp's payload parser for the connection until the session takes over."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._message: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future())
        self._session: Session | None = None

    async def message(self) -> dict[str, Any]:
        return await self._message

    def attach(self, session: Session) -> None:
        """From now on the session gets the client's bytes, starting with any left over."""
        self._session = session
        rest, self._buffer = bytes(self._buffer), bytearray()
        if rest:
            session.feed_data(rest)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._session is not None:
            return self._session.feed_data(data)
        self._buffer += data
        if not self._message.done():
            self._parse()
        return False, b""

    def feed_eof(self) -> None:
        if self._session is not None:
            self._session.feed_eof()
        elif not self._message.done():
            self._message.set_exception(AuthMessageError("closed before authenticating"))

    def _parse(self) -> None:
        buffer = self._buffer
        if len(buffer) < 2:
            return
        b0, b1 = buffer[0], buffer[1]
        length, header = b1 & 0x7F, 6
        if length == 126:
            header = 8
        elif length == 127:
            header = 14
        if len(buffer) < header:
            return
        if length == 126:
            length = int.from_bytes(buffer[2:4], "big")
        elif length == 127:
            length = int.from_bytes(buffer[2:10], "big")
        try:
            if b0 & 0x0F == 0x08:
                raise AuthMessageError("closed before authenticating")
            if b0 != 0x81 or not b1 & 0x80:  # FIN + text, masked as clients must
                raise AuthMessageError("the first message must be a text auth message")
            if length > MAX_AUTH_MESSAGE_BYTES:
                raise AuthMessageError(f"the auth message exceeds {MAX_AUTH_MESSAGE_BYTES} bytes")
        except AuthMessageError as exc:
            self._message.set_exception(exc)
            return
        if len(buffer) < header + length:
            return
        mask = buffer[header - 4 : header]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[header : header + length]))
        del buffer[: header + length]
        try:
            message = json.loads(payload)
            if not isinstance(message, dict) or message.get("type") != "auth":
                raise ValueError
        except ValueError:
            self._message.set_exception(
                AuthMessageError('the first message must be JSON {"type": "auth", ...}'))
            return
        self._message.set_result(message)


def text_frame(text: str) -> bytes:
    """An unmasked text frame (server to client)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    assert n < 1 << 16, "the proxy's own messages are small"
    return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload


AUTH_OK = text_frame(json.dumps({"type": "auth", "ok": True}))
