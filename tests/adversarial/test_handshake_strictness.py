"""Handshakes a proxy and an upstream could read two ways are refused, and nothing a
client sends can ride along as a credential or pose as the proxy's identity headers."""

from __future__ import annotations

from websockets.asyncio.client import connect

from tests.support import KEY, handshake_head, raw_exchange, status_of
from wsgate_proxy.credentials import encode_bearer_subprotocol, encode_key_subprotocol

BAD = {
    "Host with two ports": handshake_head("/.ws", "a.example.com:80:80", "apikey: john-key"),
    "Host with userinfo": handshake_head("/.ws", "user@a.example.com", "apikey: john-key"),
    "Host port out of range": handshake_head("/.ws", "a.example.com:70000", "apikey: john-key"),
    "two Host headers": handshake_head("/.ws", "a.example.com", "Host: b.example.com",
                                       "apikey: john-key"),
    "HTTP/1.0": handshake_head("/.ws", "h", "apikey: john-key", version="1.0"),
    "two keys": handshake_head("/.ws", "h", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==",
                               "apikey: john-key"),
    "two versions": handshake_head("/.ws", "h", "Sec-WebSocket-Version: 13",
                                   "apikey: john-key"),
    "a body": handshake_head("/.ws", "h", "Content-Length: 5", "apikey: john-key") + b"hello",
    "absolute-form target": handshake_head("http://evil.example/.ws", "h", "apikey: john-key"),
    "encoded slash": handshake_head("/.ws%2f..%2fadmin", "h", "apikey: john-key"),
}


async def test_ambiguous_handshakes_are_400(serve, upstream):
    served = await serve()
    for case, request in BAD.items():
        answer = await raw_exchange(served.proxy.port, request)
        assert status_of(answer) == 400, (case, answer[:300])
    assert upstream.requests == []  # never routed anywhere


async def test_no_second_credential_and_no_spoofed_identity_reach_the_upstream(serve, upstream):
    served = await serve(auth={"methods": ["KeyAuth", "JWT"],
                               "keyAuth": {"header": "apikey", "query": "apikey",
                                           "cookie": "session", "subprotocol": True}})
    headers = {**KEY, "X_Consumer_Username": "mallory", "X-Forwarded_For": "10.0.0.1",
               "Authorization": "Bearer not-used", "Cookie": "session=other; theme=dark"}
    protocols = [encode_key_subprotocol("other-key"), encode_bearer_subprotocol("a.b.c"), "chat"]
    async with connect(served.url + "?apikey=other&access_token=t&x=1",
                       additional_headers=headers, subprotocols=protocols) as ws:
        assert ws.subprotocol is None or ws.subprotocol in protocols
    request = upstream.requests[-1]
    names = {name.lower() for name in request.headers}
    assert "x_consumer_username" not in names
    assert "x-forwarded_for" not in names
    assert request.headers.get_all("X-Consumer-Username") == ["john"]
    assert request.headers["X-Forwarded-For"] == "127.0.0.1"
    assert "authorization" not in names
    assert "apikey" not in names
    assert request.headers["Cookie"] == "theme=dark"
    assert request.path == "/.ws?x=1"
    assert request.headers.get("Sec-WebSocket-Protocol") == "chat"


async def test_a_body_is_not_announced_upstream(serve, upstream):
    served = await serve()
    answer = await raw_exchange(served.proxy.port,
                                handshake_head("/.ws", "h", "Content-Length: 0",
                                               "apikey: john-key"))
    assert status_of(answer) == 101
    assert "content-length" not in {n.lower() for n in upstream.requests[-1].headers}
