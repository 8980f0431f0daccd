"""The upstream's response head: garbage in names and values (CR, LF, NUL, other
controls), and heads too big, are refused exactly as before the control-character check
became a byte scan."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import RawUpstream, switching
from wsgate_proxy.config import Endpoint
from wsgate_proxy.upstream import (
    MAX_RESPONSE_HEAD,
    UpstreamError,
    has_control,
    open_upstream,
    parse_response_head,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (f"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
# The check as it was (a regex with look-arounds over the decoded head): the oracle.
BEFORE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")

# Bytes that matter to the check, often; any byte, sometimes.
_BYTE = st.one_of(st.sampled_from(b"\r\n\t\x00\x01\x0b\x0c\x1f\x7f\x80\xff :aZ"),
                  st.integers(0, 255))


@settings(max_examples=500)
@given(st.lists(_BYTE, max_size=200).map(bytes), st.binary(max_size=20))
def test_the_byte_scan_finds_what_the_regex_found(garbage, suffix):
    for head in (garbage, switching(KEY, "X-A: v") + garbage + suffix,
                 switching(KEY, "X-A: " + garbage.decode("latin-1"))):
        assert has_control(head) == bool(BEFORE.search(head.decode("latin-1"))), head


@pytest.mark.parametrize("extra", [
    "X-Evil: a\nInjected: b",  # bare LF in a value
    "X-Evil: a\rInjected: b",  # bare CR in a value
    "X-Evil: a\r\rb",
    "X-Evil: a\n\rb",
    "X-Evil: a\x00b",  # NUL
    "X-Evil: \x1b[31m",  # escape
    "X-Evil: a\x7fb",  # DEL
    "X-Evil: a\x0bb\x0cc",  # vertical tab, form feed
    "X\nEvil: a",  # bare LF in a name
    "X\rEvil: a",
    "X\x00Evil: a",
    "X-\x01: a",
    "X Evil: a",  # not a token
    "no colon at all",
])
def test_garbage_in_a_name_or_value_is_refused(extra):
    with pytest.raises(UpstreamError, match="malformed HTTP response head"):
        parse_response_head(switching(KEY, extra))


def test_tabs_and_latin_1_in_values_pass_as_before():
    head = switching(KEY, "X-Tab: a\tb", "X-Latin: caf\xe9 \xff")
    assert not BEFORE.search(head.decode("latin-1"))
    response = parse_response_head(head)
    assert response.headers["X-Tab"] == "a\tb"
    assert response.headers["X-Latin"] == "caf\xe9 \xff"


async def _dial(answer: bytes) -> None:
    async def handler(reader, writer, key, head):
        writer.write(answer)
        await writer.drain()

    async with RawUpstream(handler) as upstream:
        transport, _, _ = await open_upstream(
            Endpoint(address="127.0.0.1", port=upstream.port), REQUEST, KEY, 5.0)
        transport.close()


@pytest.mark.parametrize("answer", [
    switching(KEY, "X-Evil: a\x00b"),
    switching(KEY, "X-Big: " + "b" * (MAX_RESPONSE_HEAD - 200) + "\x00"),  # big and bad
    b"\x00\x01garbage\r\n\r\n",
])
async def test_a_dial_answered_with_garbage_is_refused(answer):
    with pytest.raises(UpstreamError, match="malformed HTTP response head"):
        await _dial(answer)


async def test_a_head_beyond_the_limit_is_refused_before_it_ends():
    answer = switching(KEY)[:-2] + b"X-Huge: " + b"h" * MAX_RESPONSE_HEAD  # no end
    with pytest.raises(UpstreamError, match=f"exceeds {MAX_RESPONSE_HEAD} bytes"):
        await _dial(answer)


async def test_a_whole_head_beyond_the_limit_is_refused_even_in_one_read():
    """Refused however the bytes arrive (it was accepted when the whole head came in one
    read, refused when it came in pieces)."""
    answer = switching(KEY, "X-Huge: " + "h" * MAX_RESPONSE_HEAD)
    with pytest.raises(UpstreamError, match=f"exceeds {MAX_RESPONSE_HEAD} bytes"):
        await _dial(answer)


async def test_a_head_just_within_the_limit_is_accepted():
    head = switching(KEY)
    answer = switching(KEY, "X-Big: " + "b" * (MAX_RESPONSE_HEAD - len(head) - 9))
    assert len(answer) <= MAX_RESPONSE_HEAD
    await _dial(answer)
