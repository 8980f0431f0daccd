"""Claims of provider tokens: requiredClaims matching, claims as header values, and the
keys a JWKS may hold."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from wsgate_proxy.jwks import parse_jwks, signing_key
from wsgate_proxy.oidc import claim_matches, header_value


def test_a_claim_matches_by_equality_or_by_containing_one_value():
    assert claim_matches("chat", ["chat"])
    assert claim_matches("read chat write", ["chat"])  # scope: space-separated
    assert claim_matches(["a", "chat"], ["chat", "x"])
    assert claim_matches(7, ["7"])
    assert claim_matches(True, ["true"])
    assert not claim_matches("chatty", ["chat"])
    assert not claim_matches(None, ["chat"])
    assert not claim_matches({"chat": True}, ["chat"])
    assert not claim_matches([{"chat": 1}], ["chat"])


def test_claims_become_header_values_and_objects_do_not():
    assert header_value("alice") == "alice"
    assert header_value(["a", "b", 3]) == "a,b,3"
    assert header_value(False) == "false"
    assert header_value({"a": 1}) is None
    assert header_value(["a", {"b": 1}]) is None


def jwk(key, **extra) -> dict:
    algorithm = {rsa.RSAPublicKey: jwt.algorithms.RSAAlgorithm,
                 ec.EllipticCurvePublicKey: jwt.algorithms.ECAlgorithm,
                 ed25519.Ed25519PublicKey: jwt.algorithms.OKPAlgorithm}
    public = key.public_key()
    kind = next(v for k, v in algorithm.items() if isinstance(public, k))
    return {**kind.to_jwk(public, as_dict=True), **extra}


def test_algorithms_come_from_the_keys_and_hmac_never():
    rs = signing_key(jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    assert rs is not None
    assert rs.algorithms == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    pinned = signing_key(jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                             alg="PS256"))
    assert pinned is not None
    assert pinned.algorithms == {"PS256"}
    es = signing_key(jwk(ec.generate_private_key(ec.SECP384R1())))
    assert es is not None
    assert es.algorithms == {"ES384"}
    ed = signing_key(jwk(ed25519.Ed25519PrivateKey.generate()))
    assert ed is not None
    assert ed.algorithms == {"EdDSA"}
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refused = [
        {"kty": "oct", "k": "c2VjcmV0"},  # HMAC: never from a JWKS
        jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), alg="HS256"),
        jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), alg="none"),
        jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), use="enc"),
        jwk(weak),
        {**jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
         **jwt.algorithms.RSAAlgorithm.to_jwk(
             rsa.generate_private_key(public_exponent=65537, key_size=2048), as_dict=True)},
        "not a mapping", {"kty": "RSA", "n": "garbage", "e": "AQAB"},
    ]
    for entry in refused:
        assert signing_key(entry) is None, entry


def test_a_key_set_with_no_usable_key_is_an_error():
    import pytest

    from wsgate_proxy.jwks import FetchError

    for body in (b"garbage", b"[]", b'{"keys": {}}', b'{"keys": [{"kty": "oct", "k": "eA"}]}',
                 b'{"keys": [' + b",".join([b'{"kty": "oct"}'] * 65) + b"]}"):
        with pytest.raises(FetchError):
            parse_jwks(body)


def test_fields_of_the_wrong_type_make_a_key_unusable_not_an_error():
    import pytest

    from wsgate_proxy.jwks import FetchError

    good = jwk(ec.generate_private_key(ec.SECP256R1()))
    rsa_key = jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for entry in ({**good, "crv": ["P-256"]}, {**good, "crv": {"P-256": 1}},
                  {**rsa_key, "alg": ["RS256"]}, {**rsa_key, "kty": ["RSA"]},
                  {**rsa_key, "kid": {"a": 1}}, {"kty": "OKP", "crv": ["Ed25519"]}):
        assert signing_key(entry) is None, entry
    for body in (b'{"keys": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
                 b"[" * 200_000):  # nested deeper than the parser recurses, under 512 KiB
        with pytest.raises(FetchError):
            parse_jwks(body)


async def test_a_token_without_kid_is_tried_against_a_few_keys_only():
    """Each key tried is a signature check an anonymous client makes the proxy do."""
    import time

    import pytest

    from wsgate_proxy.config import Backend, JwtOptions, JwtProvider, PathMatch, Route, RouteAuth
    from wsgate_proxy.jwks import KeySet, SigningKey
    from wsgate_proxy.oidc import MAX_KEYLESS_CANDIDATES, verify
    from wsgate_proxy.outbound import Outbound
    from wsgate_proxy.refusals import Forbidden, Unauthorized

    issuer = "https://idp.test"
    provider = JwtProvider(issuer=issuer)
    route = Route(namespace="default", name="r", paths=(PathMatch(type="Prefix", value="/"),),
                  backend=Backend(service="s"),
                  auth=RouteAuth(methods=("JWT",), jwt=JwtOptions(providers=(provider,))))
    private = [rsa.generate_private_key(public_exponent=65537, key_size=2048)
               for _ in range(MAX_KEYLESS_CANDIDATES + 1)]
    keyset = KeySet(issuer, None, None, Outbound())
    keyset.keys = tuple(SigningKey(f"k{i}", frozenset({"RS256"}), key.public_key())
                        for i, key in enumerate(private))
    keyset._refresher = keyset._inflight = None
    keyset._last_started = time.monotonic()  # a refetch was just made: none now
    keyset.start = lambda: None  # the keys are held; nothing to fetch in this test

    def token(key) -> str:
        return jwt.encode({"iss": issuer, "sub": "a", "exp": int(time.time()) + 60}, key,
                          algorithm="RS256")

    granted = await verify(route, provider, keyset, token(private[1]), Unauthorized, Forbidden)
    assert granted.identity == "a"
    with pytest.raises(Unauthorized, match="signature is not valid"):
        await verify(route, provider, keyset, token(private[-1]), Unauthorized, Forbidden)
