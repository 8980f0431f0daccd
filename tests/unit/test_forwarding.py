"""forwarding.py: what the upstream's handshake request keeps and drops, per route, with
each route's rules worked out once."""

from __future__ import annotations

import asyncio

from aiohttp.http_parser import HttpRequestParser, RawRequestMessage

from wsgate_proxy import forwarding
from wsgate_proxy.config import Route
from wsgate_proxy.handshake import Handshake
from wsgate_proxy.routing import Match

HEAD = (b"GET /echo?apikey=k1&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\napikey: k1\r\nX-Token: k2\r\n"
        b"Cookie: session=s; key=k3\r\n\r\n")


async def request() -> RawRequestMessage:
    parser = HttpRequestParser(None, asyncio.get_running_loop(), 2**16, max_line_size=8190,
                               max_field_size=8190, max_headers=128, auto_decompress=False)
    return parser.feed_data(HEAD)[0][0][0]


def route(**key_auth: str) -> Route:
    return Route.model_validate({
        "namespace": "d", "name": "r", "paths": [{"type": "Prefix", "value": "/"}],
        "backend": {"service": "s", "port": "80"}, "auth": {"key_auth": key_auth}})


def handshake(r: Route) -> Handshake:
    return Handshake(None, Match(r, r.paths[0], "/echo"), "h", "/echo", "apikey=k1&x=1", ())


def forwarded(message: RawRequestMessage, r: Route, key: str | None = None) -> list[bytes]:
    head = forwarding.upstream_request(message, handshake(r), [], "10.0.0.1", False, key)
    return head.split(b"\r\n")


async def test_each_route_strips_its_own_credentials_across_a_config_change():
    message = await request()
    before = forwarded(message, route())
    assert before[0] == b"GET /echo?x=1 HTTP/1.1"
    assert b"X-Token: k2" in before
    assert not any(line.lower().startswith(b"apikey") for line in before)
    assert b"Cookie: session=s; key=k3" in before
    # A new config: the same route now reads its key from X-Token, ?token and a cookie.
    after = forwarded(message, route(header="X-Token", query="token", cookie="key"))
    assert after[0] == b"GET /echo?apikey=k1&x=1 HTTP/1.1"
    assert b"apikey: k1" in after
    assert not any(line.lower().startswith(b"x-token") for line in after)
    assert b"Cookie: session=s" in after
    # FirstMessage mode: the proxy's own key instead of the client's.
    first = forwarded(message, route(), key="b3duIGtleSBvZiB0aGUgcHJveHk=")
    assert first.count(b"Sec-WebSocket-Key: b3duIGtleSBvZiB0aGUgcHJveHk=") == 1
    assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" not in first


async def test_a_routes_rules_are_worked_out_once_and_leave_with_the_route():
    message = await request()
    r = route()
    forwarded(message, r)
    rules = forwarding._rules[id(r)][1]
    forwarded(message, r)
    assert forwarding._rules[id(r)][1] is rules
    key, before = id(r), len(forwarding._rules)
    del r  # a config replaced: its route freed, its rules with it
    assert key not in forwarding._rules
    assert len(forwarding._rules) == before - 1
