"""Identity providers as a trust boundary: garbage, slowness, hugeness and absence of
their key sets, and tokens with garbage key ids.

Until a provider's keys arrive its tokens get 503 (never let through) within a bound;
the proxy's memory stays flat; the IdP is never asked once per handshake; a
well-behaved client elsewhere is served throughout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.peers import free_port
from tests.support import (
    Bystander,
    MemoryPeak,
    handshake_head,
    metric_value,
    raw_exchange,
    route,
    status_of,
)

pytestmark = pytest.mark.timeout(120)
ISSUER = "https://idp.example.com/realms/demo"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WEAK = rsa.generate_private_key(public_exponent=65537, key_size=1024)
CONCURRENT = 50
# JSON of the right outline with fields of the wrong type (lists where strings belong).
STRUCTURED_GARBAGE = json.dumps({"keys": [
    {"kty": "EC", "crv": ["P-256"], "x": "AA", "y": "AA", "kid": "k1"},
    {**jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "alg": ["RS256"],
     "kid": "k1"},
    {"kty": ["RSA"], "kid": "k1"}, {"kty": "OKP", "crv": {"Ed25519": 1}, "kid": "k1"}]}).encode()


class HostileIdp:
    """Key sets that are slow, garbage, huge or unusable; counts what it is asked."""

    def __init__(self) -> None:
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        kind = request.match_info["kind"]
        if kind == "slow":
            await asyncio.sleep(30)
        if kind == "garbage":
            return web.Response(body=os.urandom(4096))
        if kind == "structured" or (kind == "recovering" and self.requests <= 2):
            return web.Response(body=STRUCTURED_GARBAGE, content_type="application/json")
        if kind == "recovering":
            return web.json_response({"keys": [
                {**jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True),
                 "kid": "k1"}]})
        if kind == "nested":  # deeper than a JSON parser recurses, well under 512 KiB
            return web.Response(body=b'{"keys": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                                content_type="application/json")
        if kind == "huge":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(160):  # 10 MiB, as fast as it can be read
                await response.write(b'{"keys": [' + b" " * 65536)
            return response
        unusable = [  # an HMAC key and a weak RSA key: neither may ever verify a token
            {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "k1"},
            {**jwt.algorithms.RSAAlgorithm.to_jwk(WEAK.public_key(), as_dict=True),
             "kid": "k1"},
        ]
        return web.json_response({"keys": unusable})

    async def __aenter__(self) -> HostileIdp:
        app = web.Application()
        app.router.add_get("/{kind}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()



def token(kid: str = "k1") -> str:
    return jwt.encode({"iss": ISSUER, "sub": "alice", "aud": "chat",
                       "exp": int(time.time()) + 300}, KEY, algorithm="RS256",
                      headers={"kid": kid})


@pytest.mark.parametrize(("kind", "bound"), [
    ("slow", 8.0), ("garbage", 2.0), ("structured", 2.0), ("nested", 2.0), ("huge", 3.0),
    ("unusable", 2.0), ("absent", 2.0)])
async def test_a_hostile_key_set_is_never_trusted_and_costs_a_bounded_wait(serve, kind,
                                                                            bound):
    async with HostileIdp() as idp:
        jwks = (f"http://127.0.0.1:{free_port()}/jwks" if kind == "absent"
                else f"http://127.0.0.1:{idp.port}/{kind}")
        served = await serve(route("idp", "/idp", {"methods": ["JWT"], "jwt": {"providers": [
            {"issuer": ISSUER, "jwksUri": jwks, "audiences": ["chat"]}]}}))
        head = handshake_head("/idp", "h", f"Authorization: Bearer {token()}")
        async with Bystander(served.url) as bystander, \
                MemoryPeak(served.proxy.proc.pid) as memory:
            started = time.monotonic()
            answers = await asyncio.gather(*(raw_exchange(served.proxy.port, head, timeout=15)
                                             for _ in range(CONCURRENT)))
            took = time.monotonic() - started
        statuses = {status_of(a) for a in answers}
        print(f"FIGURES {kind} key set: {CONCURRENT} handshakes answered {statuses} in "
              f"{took:.2f}s; the IdP was asked {idp.requests} times; proxy grew "
              f"{memory.grown_kib} KiB; bystander worst {bystander.worst:.2f}s")
        assert statuses == {503}
        assert all(b"signing keys of identity provider" in a for a in answers)
        # Why (the key set's address, the network error) is the operator's, not the client's.
        assert not any(jwks.split("/")[2].encode() in a for a in answers)
        assert took < bound
        assert idp.requests <= 3  # one fetch (and its retries), not one per handshake
        assert memory.grown_kib < 24 * 1024
        bystander.assert_served()
        summary = (await served.admin.request("GET", "/config"))[1]
        assert summary["identityProviders"][0]["keys"] == []
        assert summary["identityProviders"][0]["error"]


async def test_garbage_key_ids_cannot_make_the_proxy_hammer_the_idp(serve, oidc):
    served = await serve(route("idp", "/idp", {"methods": ["JWT"], "jwt": {"providers": [
        {"issuer": oidc.issuer, "audiences": ["chat-app"]}]}}))
    good = await oidc.token("alice")
    head = handshake_head("/idp", "h", f"Authorization: Bearer {good}")
    assert status_of(await raw_exchange(served.proxy.port, head)) == 101
    claims = {"iss": oidc.issuer, "sub": "x", "aud": "chat-app",
              "exp": int(time.time()) + 300}
    started = time.monotonic()
    statuses = []
    while time.monotonic() - started < 3:  # 3 s of tokens with a new kid each
        garbage = jwt.encode(claims, KEY, algorithm="RS256",
                             headers={"kid": os.urandom(8).hex()})
        wave = [raw_exchange(served.proxy.port, handshake_head(
            "/idp", "h", f"Authorization: Bearer {garbage}")) for _ in range(20)]
        statuses += [status_of(a) for a in await asyncio.gather(*wave)]
    fetches = metric_value(await served.admin.metrics(), "wsgate_jwks_fetches_total",
                           issuer=oidc.issuer, result="ok")
    print(f"FIGURES garbage kids: {len(statuses)} handshakes in 3 s, {fetches:.0f} key set "
          "fetches")
    assert set(statuses) == {401}
    assert fetches <= 3  # the first, then at most one per 5 s however many kids
    assert status_of(await raw_exchange(served.proxy.port, head)) == 101


def _forged(header: dict, claims: dict) -> str:
    """A token whose header no JWT library would write (fields of the wrong type)."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part(claims)}.{part({'sig': 1})}"


async def test_a_token_header_of_the_wrong_shape_is_refused_not_a_server_error(serve, oidc):
    served = await serve(route("idp", "/idp", {"methods": ["JWT"], "jwt": {"providers": [
        {"issuer": oidc.issuer, "audiences": ["chat-app"]}]}}))
    good = await oidc.token("alice")
    claims = {"iss": oidc.issuer, "sub": "x", "aud": "chat-app",
              "exp": int(time.time()) + 300}
    headers = [{"alg": ["RS256"], "typ": "JWT"}, {"alg": {"RS256": 1}},
               {"alg": "RS256", "kid": ["k1"]}, {"alg": "RS256", "kid": {"a": 1}},
               {"alg": None}, {"alg": 256}]
    async with Bystander(served.url) as bystander:
        for header in headers:
            answer = await raw_exchange(served.proxy.port, handshake_head(
                "/idp", "h", f"Authorization: Bearer {_forged(header, claims)}"))
            assert status_of(answer) == 401, (header, answer[:300])
    bystander.assert_served()
    ok = handshake_head("/idp", "h", f"Authorization: Bearer {good}")
    assert status_of(await raw_exchange(served.proxy.port, ok)) == 101


async def test_keys_refreshing_survives_a_malformed_key_set(serve):
    """Structured garbage twice, then a good key set: the refresher (backing off 1 s, 2 s)
    is still alive and picks the good keys up without a restart."""
    async with HostileIdp() as idp:
        served = await serve(route("idp", "/idp", {"methods": ["JWT"], "jwt": {"providers": [
            {"issuer": ISSUER, "jwksUri": f"http://127.0.0.1:{idp.port}/recovering",
             "audiences": ["chat"]}]}}))
        head = handshake_head("/idp", "h", f"Authorization: Bearer {token()}")
        assert status_of(await raw_exchange(served.proxy.port, head)) == 503
        for _ in range(100):  # 10 s at most: the third fetch comes 3 s after the first
            summary = (await served.admin.request("GET", "/config"))[1]
            if summary["identityProviders"][0]["keys"] == ["k1"]:
                break
            await asyncio.sleep(0.1)
        assert idp.requests >= 3, "the key refresher stopped after a malformed key set"
        assert status_of(await raw_exchange(served.proxy.port, head)) == 101
