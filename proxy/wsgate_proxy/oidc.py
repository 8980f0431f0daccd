"""Verifying JWTs: the claims every token is held to, and tokens of OpenID Connect providers.

A route's ``jwt.providers`` accept tokens of an identity provider without any
WsConsumer: the token's ``iss`` selects the provider, its signature is checked with the
provider's published keys (jwks.py; the algorithm must be one the key allows, never
``none`` or HMAC), ``exp`` is required and ``nbf``/``iat`` are checked with the route's
clock skew, ``aud`` must include one of the provider's audiences (else the route's
``jwt.audience``, when set). Then:
- ``requiredClaims``: each must match; a claim matches when it equals one of the values
  or, for an array or a space-separated string (``scope``), contains one of them (403
  with ``error="insufficient_scope"`` otherwise);
- ``claimsToHeaders``: claims go to the upstream as headers, strings as they are,
  numbers and booleans as JSON writes them, arrays comma-joined; an object cannot be a
  header value and refuses the handshake (403);
- ``identityClaim`` (default ``sub``) names who the session belongs to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from .config import JwtProvider, Route
from .jwks import ASYMMETRIC, KeySet
from .refusals import AuthUnavailable, Forbidden, Unauthorized

MAX_HEADER_VALUE = 8 * 1024
# Keys a token without ``kid`` is tried against (providers publish a few; each try is a
# signature check a client can make the proxy do for nothing).
MAX_KEYLESS_CANDIDATES = 4
MAX_IDENTITY_LENGTH = 253
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

Fail = Callable[[str], Unauthorized]


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """What a verified provider token gives the session."""

    identity: str
    headers: tuple[tuple[str, str], ...]
    expires: float  # the token's exp (unix time)


class BadSignature(Exception):
    """No key tried so far verifies the token's signature (``decode`` raises it when asked
    to, so that the caller can try another key)."""


def decode(token: str, key: Any, algorithms: list[str], *, issuer: str,
           audiences: Sequence[str], leeway: int, fail: Fail,
           try_next_key: bool = False) -> dict[str, Any]:
    """The claims of a token whose signature, ``iss``, ``exp`` (required), ``nbf``,
    ``iat`` and (when ``audiences``) ``aud`` hold; else ``fail(why)`` is raised (or
    BadSignature for the signature, with ``try_next_key``)."""
    try:
        return jwt.decode(
            token, key, algorithms=algorithms, issuer=issuer,
            audience=list(audiences) or None, leeway=leeway,
            options={"require": ["exp", "iss"], "verify_aud": bool(audiences)})
    except jwt.ExpiredSignatureError:
        raise fail("the token has expired") from None
    except jwt.ImmatureSignatureError as exc:
        claim = "iat" if "iat" in str(exc) else "nbf"
        raise fail(f"the token is not valid yet ({claim})") from None
    except jwt.InvalidAudienceError:
        wanted = " or ".join(repr(a) for a in audiences)
        raise fail(f"the token's audience (aud) does not include {wanted}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise fail(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidIssuerError:
        raise fail("the token's issuer (iss) is not the expected one") from None
    except jwt.InvalidSignatureError:
        if try_next_key:
            raise BadSignature from None
        raise fail("the token's signature is not valid") from None
    except jwt.InvalidTokenError as exc:
        raise fail(f"the token is not valid: {str(exc)[:200]}") from None


def provider_for(route: Route, issuer: object) -> JwtProvider | None:
    if not isinstance(issuer, str):
        return None
    return next((p for p in route.auth.jwt.providers if p.issuer == issuer), None)


async def verify(route: Route, provider: JwtProvider, keyset: KeySet, token: str,
                 fail: Fail, forbid: Callable[[str], Forbidden]) -> ProviderToken:
    """Verify a token of this provider; a Refusal says what is wrong with it."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise fail("the bearer token is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    # The header is the client's: a list or an object where a string belongs is refused
    # like any other wrong value (never hashed, never compared).
    if not isinstance(alg, str) or alg not in ASYMMETRIC:
        raise fail(f"the token's algorithm {str(alg)[:20]!r} is not accepted from an identity "
                   "provider (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA; never none "
                   "or HMAC)")
    if kid is not None and not isinstance(kid, str):
        raise fail("the token's kid is not a string")
    await keyset.first_keys()
    if not keyset.keys:
        # Why (the fetch's error, naming the key set's URL) is in the log and GET /config.
        raise AuthUnavailable(f"the signing keys of identity provider {provider.issuer!r} are "
                              "not available; retry later")
    refetched = False
    while True:
        candidates = keyset.candidates(kid, alg)
        if kid is None:
            candidates = candidates[:MAX_KEYLESS_CANDIDATES]
        for key in candidates:
            try:
                claims = decode(token, key.key, [alg], issuer=provider.issuer,
                                audiences=audiences(route, provider),
                                leeway=route.auth.jwt.clock_skew_seconds, fail=fail,
                                try_next_key=True)
            except BadSignature:
                continue  # another key (a token without kid) may verify it
            return _granted(provider, claims, fail, forbid)
        # No key held verifies it. When that may be because the provider rotated its keys
        # since (an unknown kid, or no kid), ask once more; a known kid with a bad
        # signature is a tampered token, and no refetch would help.
        may_be_new = not candidates or kid is None
        if refetched or not may_be_new or not await keyset.refetch():
            break
        refetched = True
    if not candidates and kid is not None:
        raise fail(f"the token is signed with a key ({kid[:64]!r}) identity provider "
                   f"{provider.issuer!r} does not publish")
    raise fail("the token's signature is not valid")


def audiences(route: Route, provider: JwtProvider) -> tuple[str, ...]:
    if provider.audiences:
        return provider.audiences
    return (route.auth.jwt.audience,) if route.auth.jwt.audience else ()


def _granted(provider: JwtProvider, claims: dict[str, Any], fail: Fail,
             forbid: Callable[[str], Forbidden]) -> ProviderToken:
    for required in provider.required_claims:
        if not claim_matches(claims.get(required.name), required.values):
            raise forbid(f"the token's {required.name!r} claim does not include "
                         + " or ".join(repr(v) for v in required.values))
    headers = []
    for mapping in provider.claims_to_headers:
        value = claims.get(mapping.claim)
        if value is None:
            continue
        text = header_value(value)
        if text is None:
            raise forbid(f"the token's {mapping.claim!r} claim is an object (or holds one): it "
                         f"cannot be sent as header {mapping.header!r}")
        if len(text) > MAX_HEADER_VALUE or _CONTROL.search(text):
            raise fail(f"the token's {mapping.claim!r} claim is too long or holds control "
                       "characters")
        headers.append((mapping.header, text))
    identity = claims.get(provider.identity_claim)
    if isinstance(identity, int) and not isinstance(identity, bool):
        identity = str(identity)
    if not isinstance(identity, str) or not identity:
        raise fail(f"the token lacks the {provider.identity_claim!r} claim (a string) that "
                   "says whose it is")
    if len(identity) > MAX_IDENTITY_LENGTH or _CONTROL.search(identity):
        raise fail(f"the token's {provider.identity_claim!r} claim is longer than "
                   f"{MAX_IDENTITY_LENGTH} characters or holds control characters")
    return ProviderToken(identity, tuple(headers), float(claims["exp"]))


def claim_matches(value: object, wanted: Sequence[str]) -> bool:
    """Equal to one of ``wanted``, or (an array, a space-separated string) holding one."""
    if isinstance(value, str):
        return value in wanted or any(part in wanted for part in value.split())
    if isinstance(value, list):
        return any(_scalar(item) in wanted for item in value if _scalar(item) is not None)
    scalar = _scalar(value)
    return scalar is not None and scalar in wanted


def header_value(value: object) -> str | None:
    """A claim as a header value; None for an object (or an array holding one)."""
    if isinstance(value, list):
        parts = [_scalar(item) for item in value]
        return None if any(p is None for p in parts) else ",".join(parts)  # type: ignore[arg-type]
    return _scalar(value)


def _scalar(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None
