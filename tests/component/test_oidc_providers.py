"""JWT from an OpenID Connect provider we did not write (oidc-provider-mock): discovery,
JWKS, claims, rotation and outage, next to WsConsumers' own JWT credentials."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.peers import OidcProvider
from tests.support import credential_objects, eventually, metric_value, route
from wsgate_proxy.credentials import encode_bearer_subprotocol

# Serial: asserts a session ends within a second of its token's exp.
pytestmark = [pytest.mark.serial, pytest.mark.timeout(90)]

HMAC = "an-hmac-secret-of-at-least-32-bytes"


def provider(issuer: str, **settings) -> dict:
    return {"issuer": issuer, "audiences": ["chat-app"],
            "claimsToHeaders": [{"claim": "sub", "header": "X-User-Id"},
                                {"claim": "roles", "header": "X-User-Roles"}],
            **settings}


def jwt_auth(*providers, **jwt_settings) -> dict:
    return {"methods": ["JWT"], "jwt": {"providers": list(providers), **jwt_settings}}


@pytest.fixture
async def idp_route(serve, oidc):
    async def start(*extra, spec=None, jwt_settings=None, **settings):
        return await serve(
            route("idp", "/idp", jwt_auth(provider(oidc.issuer, **settings),
                                          **(jwt_settings or {})), **(spec or {})),
            *credential_objects("hs", "JWT", {"issuer": "hs-issuer", "secret": HMAC}),
            *extra)
    return start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(url: str, **kwargs) -> tuple[int, str]:
    try:
        async with connect(url, **kwargs) as ws:
            await ws.send("x")
            await ws.recv()
            return 101, ""
    except InvalidStatus as exc:
        return exc.response.status_code, exc.response.body.decode()


async def test_provider_tokens_open_sessions_from_every_place(idp_route, oidc, upstream):
    served = await idp_route(jwt_settings={"cookie": "access_token"})
    url = served.base + "/idp"
    token = await oidc.token("alice", claims={"roles": ["chat", "read"]})
    assert (await status_of(url, additional_headers=bearer(token)))[0] == 101
    seen = upstream.requests[-1].headers
    assert seen["X-Consumer-Username"] == "alice"
    assert seen["X-User-Id"] == "alice"
    assert seen["X-User-Roles"] == "chat,read"
    assert "Authorization" not in seen
    assert (await status_of(url + f"?access_token={token}"))[0] == 101
    assert upstream.requests[-1].path == "/idp"  # the token stripped
    assert (await status_of(url, subprotocols=[encode_bearer_subprotocol(token)]))[0] == 101
    assert (await status_of(url, additional_headers={
        "Cookie": f"theme=dark; access_token={token}"}))[0] == 101
    assert upstream.requests[-1].headers["Cookie"] == "theme=dark"  # the token's cookie gone
    # A WsConsumer's JWT credential works side by side on the same route.
    own = jwt.encode({"iss": "hs-issuer", "exp": int(time.time()) + 60}, HMAC)
    assert (await status_of(url, additional_headers=bearer(own)))[0] == 101
    assert upstream.requests[-1].headers["X-Consumer-Username"] == "hs"
    summary = (await served.admin.request("GET", "/config"))[1]
    assert summary["identityProviders"][0]["issuer"] == oidc.issuer


async def test_tampered_foreign_and_unsigned_tokens_are_refused(idp_route, oidc):
    served = await idp_route()
    url = served.base + "/idp"
    token = await oidc.token("alice")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    stranger = OidcProvider().start()  # another provider: same kind of tokens, its own key
    try:
        foreign = await stranger.token("alice")
    finally:
        stranger.stop()
    # The same issuer, signed with a key the provider never published.
    own_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = jwt.encode({**claims, "sub": "alice"}, own_key, algorithm="RS256",
                          headers={"kid": "not-theirs"})
    unsigned = jwt.encode(claims, None, algorithm="none")
    hmac_with_public = jwt.encode(claims, "a-public-key-taken-for-a-shared-secret",
                                  algorithm="HS256")
    cases = [
        (f"{header}.{forged}.{signature}", 401, "signature is not valid"),
        (foreign, 401, "issuer (iss) is neither"),
        (impostor, 401, "does not publish"),
        (unsigned, 401, "algorithm 'none' is not accepted"),
        (hmac_with_public, 401, "algorithm 'HS256' is not accepted"),
        (await oidc.token("alice", client_id="other-app"), 401, "audience (aud)"),
    ]
    for bad, status, words in cases:
        got, body = await status_of(url, additional_headers=bearer(bad))
        assert got == status, (words, body)
        assert words in body, (words, body)
    assert (await status_of(url, additional_headers=bearer(token)))[0] == 101


async def test_required_claims_and_objects_in_headers(idp_route, oidc):
    served = await idp_route(requiredClaims=[{"name": "scope", "values": ["chat"]},
                                             {"name": "roles", "values": ["admin", "chat"]}])
    url = served.base + "/idp"
    good = await oidc.token("alice", claims={"scope": "read chat", "roles": ["chat"]})
    assert (await status_of(url, additional_headers=bearer(good)))[0] == 101
    no_scope = await oidc.token("bob", claims={"scope": "read", "roles": ["chat"]})
    status, body = await status_of(url, additional_headers=bearer(no_scope))
    assert (status, "'scope' claim does not include 'chat'" in body) == (403, True)
    object_roles = await oidc.token("carol", claims={"scope": "chat",
                                                     "roles": [{"name": "chat"}]})
    status, body = await status_of(url, additional_headers=bearer(object_roles))
    assert status == 403


async def test_key_rotation_is_followed_and_an_outage_keeps_known_keys(idp_route, oidc):
    served = await idp_route()
    url = served.base + "/idp"
    before = await oidc.token("alice")
    assert (await status_of(url, additional_headers=bearer(before)))[0] == 101
    oidc.restart()  # a new signing key at the same issuer
    after = await oidc.token("alice")

    async def accepted():
        assert (await status_of(url, additional_headers=bearer(after)))[0] == 101
    # One refetch for a key not held (at most one per 5 s): no proxy restart.
    await eventually(accepted, timeout=8, interval=0.5)
    oidc.stop()  # the provider is down: the keys held keep working
    for _ in range(3):
        assert (await status_of(url, additional_headers=bearer(after)))[0] == 101
    metrics = await served.admin.metrics()
    assert metric_value(metrics, "wsgate_jwks_keys", issuer=oidc.issuer) == 1


@pytest.mark.parametrize("policy", ["Close", "Keep"])
async def test_a_provider_token_ends_its_session(serve, policy):
    idp = OidcProvider(token_max_age=2).start()
    try:
        served = await serve(route("idp", "/idp", jwt_auth(
            provider(idp.issuer), clockSkewSeconds=0), onCredentialExpired=policy))
        token = await idp.token("alice")
        exp = jwt.decode(token, options={"verify_signature": False})["exp"]
        ws = await connect(served.base + "/idp", additional_headers=bearer(token))
        if policy == "Close":
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert (ws.close_code, ws.close_reason) == (1008, "credential expired")
            assert -0.1 < time.time() - exp < 1.0
        else:
            async def kept() -> None:  # its exp passed, and it was kept
                assert metric_value(await served.admin.metrics(),
                                    "wsgate_credentials_expired_total",
                                    route="default/idp", action="kept") >= 1
            await eventually(kept, timeout=max(0.0, exp - time.time()) + 5)
            await ws.send("kept")
            assert await ws.recv() == "kept"
            await ws.close()
    finally:
        idp.stop()
