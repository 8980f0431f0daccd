"""The client-facing HTTP server: aiohttp's, with bounds on what a request head may cost.

aiohttp limits each header line (``max_line_size``, ``max_field_size``: 8190 bytes)
and the number of headers (``max_headers``: 128), but not the head as a whole nor the
time it takes to arrive: 128 lines of 8 KiB each is 1 MiB held per connection, and a
head sent a byte a second is held for as long as the client likes. So the handler
here counts the bytes and the time of each head until aiohttp's parser completes it:
past ``max_bytes`` the client gets ``431`` and the connection is closed; past
``timeout_seconds`` ``408`` and closed. The answer is followed by a half-close and
what the client still sends is read and dropped for LINGER_SECONDS before the socket
is closed: closing a socket with unread bytes resets it, and the client would never
see its answer. A connection that sends nothing at all, or
nothing after a response, is closed by aiohttp's keep-alive timer, set to
``keepalive_seconds``.

The counting relies on RequestHandler's internals (``_upgraded``, ``_payload_parser``,
``_request_count``, ``_request_in_progress``), like the relay's ``set_parser`` hook;
tests/component/test_aiohttp_hook.py fails loudly if they change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

# After a 408 or 431: how long what the client still sends is read and dropped.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HeadLimits:
    # The time from a head's first byte to its last.
    timeout_seconds: float = 5.0
    # The bytes of one head, request line and headers together.
    max_bytes: int = 64 * 1024
    # An open connection with no request under way (before the first, between two).
    keepalive_seconds: float = 15.0


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler, with a deadline and a size cap on request heads."""

    __slots__ = ("_head_bytes", "_head_timer", "_limits", "_refused")

    def __init__(self, manager: web.Server, limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_bytes = 0
        # The head deadline; after a refusal, the end of the linger.
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 408 or 431: dropped unread
        if self._upgraded or self._payload_parser is not None or self._force_close or \
                self._close:
            super().data_received(data)
            return
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head is complete
            self._head_bytes = 0
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            return
        if self._request_in_progress or not data:
            return  # the body of a request being answered, not a head
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(self._limits.timeout_seconds,
                                                     self._head_timed_out)
        self._head_bytes += len(data)
        if self._head_bytes > self._limits.max_bytes:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                         f"the request head exceeds {self._limits.max_bytes} bytes")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request head did not arrive within "
                                                 f"{self._limits.timeout_seconds:g}s")

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer (when nothing else is being answered on this connection) and close."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._request_in_progress or self._messages or not transport.can_write_eof():
            self.force_close()  # a response is under way: no room for ours
            return
        body = (message + "\n").encode()
        transport.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; "
            f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            .encode() + body)
        transport.write_eof()
        self._refused = True
        self._head_timer = self._loop.call_later(LINGER_SECONDS, self.force_close)


class Listener(web.Server):
    """``web.Server`` whose connections are GuardedRequestHandlers."""

    def __init__(self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                 limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=limits.keepalive_seconds, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, self.limits, loop=self._loop, **self._kwargs)
