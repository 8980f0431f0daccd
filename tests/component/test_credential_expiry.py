"""Sessions end with their credential: a JWT's exp closes the session (1008 "credential
expired"), Keep keeps it, and in FirstMessage mode a client renews it in-band."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from websockets.asyncio.client import connect

from tests.support import credential_objects, eventually, metric_value
from wsgate_proxy.gateway import auth_message

# Serial: asserts a session ends within a second of its token's exp.
pytestmark = [pytest.mark.serial, pytest.mark.timeout(60)]

HMAC = "an-hmac-secret-of-at-least-32-bytes"
CONSUMERS = (credential_objects("hs", "JWT", {"issuer": "hs-issuer", "secret": HMAC})
             + credential_objects("other", "JWT", {"issuer": "other-issuer",
                                                   "secret": HMAC + "-other"}))


def token(seconds: float, issuer: str = "hs-issuer", secret: str = HMAC) -> tuple[str, int]:
    exp = int(time.time() + seconds)
    return jwt.encode({"iss": issuer, "exp": exp}, secret), exp


async def kept(served, at_least: int) -> None:
    """Raises until this many sessions outlived their credential under Keep."""
    assert metric_value(await served.admin.metrics(), "wsgate_credentials_expired_total",
                        route="default/echo", action="kept") >= at_least


def jwt_route(mode: str = "Handshake", **spec) -> dict:
    return {"auth": {"mode": mode, "methods": ["JWT"], "jwt": {"clockSkewSeconds": 0}},
            **spec}


async def test_a_token_expiring_in_two_seconds_closes_its_session_within_a_second(serve):
    served = await serve(*CONSUMERS, **jwt_route())
    short, exp = token(2.5)
    long_lived, _ = token(60)
    ws = await connect(served.url, additional_headers={"Authorization": f"Bearer {short}"})
    other = await connect(served.url, additional_headers={
        "Authorization": f"Bearer {long_lived}"})
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert (ws.close_code, ws.close_reason) == (1008, "credential expired")
    assert -0.05 < time.time() - exp < 1.0
    await other.send("still")
    while await other.recv() != "still":  # the greeting first
        pass
    await other.close()


async def test_keep_keeps_it_until_the_route_says_close(serve):
    served = await serve(*CONSUMERS, **jwt_route(onCredentialExpired="Keep"))
    short, _ = token(1.5)
    ws = await connect(served.url, additional_headers={"Authorization": f"Bearer {short}"})
    await eventually(lambda: kept(served, 1))  # its exp passed, and it was kept
    await ws.send("kept")
    while await ws.recv() != "kept":
        pass
    served.find("WsRoute", "echo")["spec"]["onCredentialExpired"] = "Close"
    await served.push()  # the expired session is held against the new config at once
    await asyncio.wait_for(ws.wait_closed(), 1)
    assert (ws.close_code, ws.close_reason) == (1008, "credential expired")


async def test_first_message_clients_renew_their_session_in_band(serve, upstream):
    served = await serve(*CONSUMERS, **jwt_route(mode="FirstMessage"))
    first, exp1 = token(2)
    ws = await connect(served.url)
    await ws.send(auth_message(token=first))
    answer = json.loads(await ws.recv())
    assert answer == {"type": "auth", "ok": True, "expiresAt": exp1}
    # Another identity's token, or a bad one, renews nothing: the session goes on.
    stranger, _ = token(30, "other-issuer", HMAC + "-other")
    for bad, error in ((stranger, "not the session's"), ("garbage", "not a JWT")):
        await ws.send(auth_message(token=bad))
        refused = json.loads(await ws.recv())
        assert (refused["ok"], error in refused["error"]) == (False, True), refused
    second, exp2 = token(4)
    await ws.send(auth_message(token=second))
    assert json.loads(await ws.recv()) == {"type": "auth", "ok": True, "expiresAt": exp2}
    await asyncio.sleep(max(0.0, exp1 - time.time()) + 0.5)  # past the first token's exp
    await ws.send("renewed")
    assert await ws.recv() == "renewed"
    await asyncio.wait_for(ws.wait_closed(), max(0.0, exp2 - time.time()) + 1.5)
    assert (ws.close_code, ws.close_reason) == (1008, "credential expired")
    assert -0.05 < time.time() - exp2 < 1.0
    # The upstream was dialled once (renewals do not reconnect) and never saw an auth
    # message: it echoes what it gets, and every message read above was the expected
    # answer or echo, so an echoed auth message would have failed an assertion.
    assert len(upstream.requests) == 1
