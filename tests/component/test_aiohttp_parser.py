"""The client listener (wsgate_proxy.listener) feeds request heads to aiohttp's HTTP
parser directly (llhttp, through ``aiohttp.http_parser.HttpRequestParser``), which is
not aiohttp's documented API. The minor version is pinned in pyproject.toml; these
tests fail loudly if an upgrade changes what the listener relies on."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser
from aiohttp.streams import EMPTY_PAYLOAD

HEAD = (b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"X-Raw_Name:  value \r\n\r\n")


def parser() -> HttpRequestParser:
    return HttpRequestParser(None, asyncio.get_running_loop(), 2**16, max_line_size=8190,
                             max_field_size=8190, max_headers=128, auto_decompress=False)


async def test_a_head_fed_in_pieces_gives_one_message_with_what_the_gateway_reads():
    p = parser()
    assert p.feed_data(HEAD[:20])[0] == ()  # nothing until the head is whole
    messages, _upgraded, tail = p.feed_data(HEAD[20:])
    assert len(messages) == 1
    assert tail == b""
    message, payload = messages[0]
    assert payload is EMPTY_PAYLOAD  # no body: the listener keeps the connection
    assert (message.method, message.path, message.version) == ("GET", "/a/b?x=1", (1, 1))
    assert message.headers["upgrade"] == "websocket"
    assert message.headers.getall("Host") == ["h"]
    # Raw names and values as sent (forwarding.py passes them on as bytes).
    assert (b"X-Raw_Name", b"value") in message.raw_headers
    assert message.should_close is False


async def test_a_body_and_connection_close_are_told():
    messages, _, _ = parser().feed_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                                        b"Connection: close\r\n\r\n")
    message, payload = messages[0]
    assert payload is not EMPTY_PAYLOAD
    assert message.should_close is True
    messages, _, _ = parser().feed_data(b"GET / HTTP/1.0\r\n\r\n")
    assert messages[0][0].should_close is True


@pytest.mark.parametrize("head", [
    b"\x16\x03\x01\x00\xa5\x01\x00",  # TLS on the plain port: refused at once
    b"GET / HTTP/1.1\nHost: h\n\n",  # bare LF: the listener finds a head's end by CRLFCRLF
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
])
async def test_malformed_heads_raise_with_a_message(head):
    with pytest.raises(HttpProcessingError) as info:
        parser().feed_data(head)
    assert info.value.message
