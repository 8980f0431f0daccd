"""BasicAuth, JWT and FirstMessage mode through a real proxy."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import credential_objects, route_of
from wsgate_proxy.credentials import encode_bearer_subprotocol
from wsgate_proxy.gateway import auth_message

HMAC = "an-hmac-secret-of-at-least-32-bytes"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(issuer: str, key, algorithm: str = "HS256", **claims) -> str:
    body = {"iss": issuer, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, key, algorithm=algorithm)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


CONSUMERS = (
    credential_objects("alice", "BasicAuth", {"username": "alice", "password": "s3cret!"})
    + credential_objects("hs", "JWT", {"issuer": "hs-issuer", "secret": HMAC})
    + credential_objects("rs", "JWT", {"issuer": "rs-issuer", "algorithm": "RS256",
                                       "publicKey": public_pem(RSA_KEY)})
    + credential_objects("es", "JWT", {"issuer": "es-issuer", "algorithm": "ES256",
                                       "publicKey": public_pem(EC_KEY)})
)


@pytest.fixture
def proxy_with(serve):
    """The quickstart route with these auth fields, and the consumers above."""
    async def start(**auth):
        served = await serve(*CONSUMERS)
        route_of(served.objects)["spec"]["auth"].update(auth)
        await served.push()
        return served.url, served.proxy
    return start


async def echoes(url, **kwargs) -> str:
    async with connect(url, **kwargs) as ws:
        await ws.send("ping")
        return await ws.recv()


async def refusal(url, **kwargs) -> tuple[int, str, list[str]]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return (response.status_code, response.body.decode(),
            response.headers.get_all("WWW-Authenticate"))


async def test_basic_auth(proxy_with, upstream):
    url, _ = await proxy_with(methods=["BasicAuth"])
    assert await echoes(url, additional_headers=basic("alice", "s3cret!")) == "ping"
    assert upstream.requests[-1].headers["X-Consumer-Username"] == "alice"
    assert "Authorization" not in upstream.requests[-1].headers  # hidden by default
    status, body, challenges = await refusal(url, additional_headers=basic("alice", "wrong"))
    assert (status, body.strip()) == (401, "the user name or password is not valid")
    assert challenges == ['Basic realm="default/echo", charset="UTF-8"']
    status, _, _ = await refusal(url, additional_headers={"Authorization": "Basic !!"})
    assert status == 401


async def test_basic_auth_credential_is_forwarded_when_not_hidden(proxy_with, upstream):
    url, _ = await proxy_with(methods=["BasicAuth"], hideCredentials=False)
    await echoes(url, additional_headers=basic("alice", "s3cret!"))
    assert upstream.requests[-1].headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("issuer", "key", "algorithm"),
    [("hs-issuer", HMAC, "HS256"), ("rs-issuer", RSA_KEY, "RS256"),
     ("es-issuer", EC_KEY, "ES256")],
)
async def test_jwt_in_each_place(proxy_with, upstream, issuer, key, algorithm):
    url, _ = await proxy_with(methods=["JWT"])
    t = token(issuer, key, algorithm)
    consumer = issuer.split("-")[0]
    assert await echoes(url, additional_headers={"Authorization": f"Bearer {t}"}) == "ping"
    assert upstream.requests[-1].headers["X-Consumer-Username"] == consumer
    assert await echoes(url + f"?access_token={t}&room=1") == "ping"
    assert upstream.requests[-1].path == "/.ws?room=1"  # the token is stripped
    async with connect(url, subprotocols=[encode_bearer_subprotocol(t)]) as ws:
        assert ws.subprotocol == encode_bearer_subprotocol(t)
        await ws.send("x")
        assert await ws.recv() == "x"


async def test_jwt_failures_say_what_is_wrong(proxy_with):
    url, _ = await proxy_with(methods=["JWT"], jwt={"audience": "chat"})
    cases = [
        (token("hs-issuer", "x" * 32, aud="chat"), "signature is not valid"),
        (token("hs-issuer", HMAC, aud="chat", exp=int(time.time()) - 120),
         "has expired"),
        (token("hs-issuer", HMAC, aud="chat", nbf=int(time.time()) + 120),
         "not valid yet"),
        (token("hs-issuer", HMAC, aud="other"), "does not include 'chat'"),
        (token("nobody", HMAC, aud="chat"), "issuer (iss) is neither an identity provider"),
        ("not-a-jwt", "not a JWT"),
        (jwt.encode({"iss": "hs-issuer", "aud": "chat"}, HMAC), "lacks the 'exp'"),
    ]
    for bad, words in cases:
        status, body, challenges = await refusal(
            url, additional_headers={"Authorization": f"Bearer {bad}"})
        assert status == 401
        assert words in body
        assert challenges == ['Bearer realm="default/echo", error="invalid_token"']
    good = token("hs-issuer", HMAC, aud="chat")
    assert await echoes(url, additional_headers={"Authorization": f"Bearer {good}"}) == "ping"


async def test_a_route_accepting_several_methods_names_them_all(proxy_with):
    url, _ = await proxy_with(methods=["KeyAuth", "BasicAuth", "JWT"])
    status, body, challenges = await refusal(url)
    assert status == 401
    assert [c.split()[0] for c in challenges] == ["ApiKey", "Basic", "Bearer"]
    assert "an API key in header 'apikey'" in body
    assert "'Authorization: Basic'" in body
    assert await echoes(url, additional_headers={"apikey": "john-key"}) == "ping"
    assert await echoes(url, additional_headers=basic("alice", "s3cret!")) == "ping"


async def test_rotating_a_jwt_key_revokes_its_sessions(serve):
    served = await serve(*CONSUMERS, auth={"methods": ["JWT"]})
    url = served.url
    hs = await connect(url, additional_headers={
        "Authorization": f"Bearer {token('hs-issuer', HMAC)}"})
    rs = await connect(url, additional_headers={
        "Authorization": f"Bearer {token('rs-issuer', RSA_KEY, 'RS256')}"})
    served.find("Secret", "hs-jwt")["stringData"]["secret"] = "another-hmac-secret-32-bytes!!"
    await served.push()
    await asyncio.wait_for(hs.wait_closed(), 1)
    assert (hs.close_code, hs.close_reason) == (1008, "credential revoked")
    await rs.send("still")
    assert await rs.recv() == "still"
    await rs.close()


async def first_message_session(url: str, message: str | None):
    ws = await connect(url)
    if message is not None:
        await ws.send(message)
    return ws


async def test_first_message_mode_authenticates_in_band(proxy_with, upstream):
    url, _ = await proxy_with(mode="FirstMessage",
                              methods=["KeyAuth", "BasicAuth", "JWT"])
    for credential in ({"apikey": "john-key"}, {"username": "alice", "password": "s3cret!"},
                       {"token": token("hs-issuer", HMAC)}):
        ws = await first_message_session(url, auth_message(**credential))
        answer = json.loads(await ws.recv())
        assert answer.pop("ok") is True
        # A credential with an end (a JWT) says when: the client knows when to renew.
        assert answer == ({"type": "auth", "expiresAt": answer["expiresAt"]}
                          if "token" in credential else {"type": "auth"})
        await ws.send("after auth")
        assert await ws.recv() == "after auth"
        await ws.close()
    # Nothing of the auth message reached the upstream; the identity header did.
    assert upstream.requests[-1].headers["X-Consumer-Username"] == "hs"
    assert "Sec-WebSocket-Extensions" not in upstream.requests[-1].headers


async def test_first_message_messages_sent_right_behind_the_auth_are_relayed(proxy_with):
    url, _ = await proxy_with(mode="FirstMessage")
    async with connect(url) as ws:
        await ws.send(auth_message(apikey="john-key"))
        await ws.send("hurried")  # before the proxy has answered
        assert json.loads(await ws.recv())["ok"] is True
        assert await ws.recv() == "hurried"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (auth_message(apikey="wrong"), "the API key in the message is not valid"),
        (auth_message(something="else"),
         "the auth message carries no credential this route accepts"),
        ("hello", 'the first message must be JSON {"type": "auth", ...}'),
        (b"\x00binary", "the first message must be a text auth message"),
        (None, "authentication timeout"),
    ],
)
async def test_first_message_failures_close_with_4401(proxy_with, upstream, message, reason):
    url, _ = await proxy_with(mode="FirstMessage", firstMessageTimeoutSeconds=0.5)
    ws = await first_message_session(url, message)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert (ws.close_code, ws.close_reason) == (4401, reason)
    assert upstream.requests == []  # nothing reached the upstream


async def test_first_message_consumer_not_allowed_is_4403(proxy_with, upstream):
    url, _ = await proxy_with(mode="FirstMessage", allowedConsumers={"names": ["alice"]})
    ws = await first_message_session(url, auth_message(apikey="john-key"))
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4403
    assert upstream.requests == []
