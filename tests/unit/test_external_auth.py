"""External auth's pure parts: which headers may go to an auth server, freshness, the
auth call and its cache key."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from wsgate_proxy.config import Backend as BackendConfig
from wsgate_proxy.config import ExternalAuth, PathMatch, Route, RouteAuth
from wsgate_proxy.external_auth import ExternalAuthClient, Inbound, freshness, is_sendable
from wsgate_proxy.outbound import Outbound, display_url


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def route(**external) -> Route:
    return Route(namespace="default", name="r", paths=(PathMatch(type="Prefix", value="/"),),
                 backend=BackendConfig(service="s"),
                 auth=RouteAuth(methods=("External",), external=ExternalAuth(
                     url="http://auth.test/verify", **external)))


def test_never_the_upgrade_nor_hop_by_hop_headers():
    for name in ("Upgrade", "connection", "Sec-WebSocket-Key", "Sec_WebSocket_Protocol",
                 "Host", "TE", "X-Forwarded-For", "x_forwarded_host", "X-Original-URL"):
        assert not is_sendable(name), name
    for name in ("Cookie", "Authorization", "X-Api-Key"):
        assert is_sendable(name)


def test_freshness_reads_max_age_then_expires_less_date():
    assert freshness(headers(("Cache-Control", "private, max-age=30"))) == (30.0, False)
    assert freshness(headers(("Cache-Control", "no-store"))) == (None, True)
    assert freshness(headers(("Cache-Control", "max-age=0, no-cache"))) == (0.0, True)
    assert freshness(headers(("Expires", "Thu, 01 Jan 2026 00:01:00 GMT"),
                             ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"))) == (60.0, False)
    assert freshness(headers(("Expires", "garbage"))) == (0.0, False)  # RFC 9111: expired
    assert freshness(headers()) == (None, False)


def test_the_call_carries_exactly_the_listed_headers_and_forwarded_ones():
    client = ExternalAuthClient(Outbound())
    r = route(request_headers=("Cookie", "Upgrade", "Authorization"))
    inbound = Inbound("ws.test", "/chat?room=1", "10.0.0.9", True, "1.2.3.4")
    sent = headers(("Cookie", "a=1"), ("Cookie", "b=2"), ("Upgrade", "websocket"),
                   ("Sec-WebSocket-Key", "k"), ("X-Other", "x"))
    call = client.call_for(r, sent, inbound)
    assert list(call.headers) == [
        ("Cookie", "a=1"), ("Cookie", "b=2"),
        ("X-Forwarded-Method", "GET"), ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "ws.test"), ("X-Forwarded-Uri", "/chat?room=1"),
        ("X-Forwarded-For", "1.2.3.4, 10.0.0.9"),
        ("X-Original-URL", "https://ws.test/chat?room=1")]
    # The cache key: the same call, the same key; any forwarded value differs, another.
    assert client.call_for(r, sent, inbound).cache_key == call.cache_key
    other = client.call_for(r, headers(("Cookie", "a=2")), inbound)
    assert other.cache_key != call.cache_key
    changed = client.call_for(route(request_headers=("Cookie", "Upgrade", "Authorization"),
                                    cache_seconds=5), sent, inbound)
    assert changed.cache_key != call.cache_key  # another setting: another decision


def test_urls_in_logs_lose_user_info_and_query():
    assert display_url("https://u:p@auth.test:8443/verify?token=x") == \
        "https://auth.test:8443/verify"


def test_cache_keys_tell_apart_every_value_and_every_split():
    client = ExternalAuthClient(Outbound())
    r = route(request_headers=("Cookie", "Authorization"))
    inbound = Inbound("ws.test", "/", "10.0.0.9", False, None)

    def key(*pairs: tuple[str, str]) -> bytes:
        return client.call_for(r, headers(*pairs), inbound).cache_key

    # Characters above U+00FF (aiohttp decodes header values as UTF-8) stay distinct.
    assert key(("Cookie", "sid=tok€")) != key(("Cookie", "sid=tok₤"))
    assert key(("Cookie", "sid=\udcff")) != key(("Cookie", "sid=\udcfe"))  # raw bytes
    # Where one value ends and the next begins is part of the key.
    assert key(("Cookie", "a\0cookie\0b")) != key(("Cookie", "a"), ("Cookie", "b"))
    assert key(("Cookie", "a"), ("Authorization", "b")) != key(("Cookie", "a\0authorization"))
