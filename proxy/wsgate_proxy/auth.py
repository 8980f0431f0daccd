"""Verifying a presented credential against the compiled consumers.

API keys are compared by SHA-256 digest (the proxy never holds a key in the clear);
passwords against salted PBKDF2 hashes, through a cache of successes; JWTs by
signature (PyJWT), ``exp`` and ``nbf`` with a small leeway, and ``aud`` when the route
names an audience. A token's ``iss`` selects the consumer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jwt
from multidict import CIMultiDictProxy

from .config import Consumer, JwtCredential, Route
from .credentials import (
    BEARER_QUERY,
    BEARER_SUBPROTOCOL_PREFIX,
    KEY_SUBPROTOCOL_PREFIX,
    MalformedCredential,
    Presented,
    find_credential,
)
from .passwords import PasswordVerifier
from .refusals import Forbidden, Unauthorized

JWT_LEEWAY_SECONDS = 30
_ALGORITHMS = jwt.algorithms.get_default_algorithms()


@dataclass(frozen=True, slots=True)
class Identity:
    consumer: Consumer
    credential_id: str
    # What the credential was when it was verified (a key's digest, a password's hash,
    # a JWT key's fingerprint): a live session is revoked when its consumer no longer
    # holds a credential with this fingerprint.
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: Identity | None  # None on a route with auth mode None
    presented: Presented | None


@dataclass(frozen=True, slots=True)
class _JwtEntry:
    consumer: Consumer
    credential: JwtCredential
    key: Any  # prepared once per config: parsing a PEM key per handshake is slow


class Authenticator:
    def __init__(self, consumers: tuple[Consumer, ...], passwords: PasswordVerifier) -> None:
        self._passwords = passwords
        self._keys: dict[tuple[str, str], Identity] = {}
        self._basic: dict[tuple[str, str], tuple[Consumer, str, str]] = {}
        self._jwt: dict[tuple[str, str], _JwtEntry] = {}
        self._fingerprints: dict[str, tuple[Consumer, frozenset[str]]] = {}
        for consumer in consumers:
            self.add(consumer)

    def copy(self) -> Authenticator:
        """An authenticator of its own to change (a dict copy each: no Python loop per
        consumer), for the next config while this one keeps serving."""
        other = Authenticator((), self._passwords)
        other._keys, other._basic = dict(self._keys), dict(self._basic)
        other._jwt, other._fingerprints = dict(self._jwt), dict(self._fingerprints)
        return other

    def add(self, consumer: Consumer) -> None:
        """Add a consumer (one of the same key is removed first)."""
        self.remove(consumer.key)
        ns = consumer.namespace
        prints = set()
        for key in consumer.keys:
            self._keys[(ns, key.sha256)] = Identity(consumer, key.id, key.sha256)
            prints.add(key.sha256)
        for basic in consumer.basic:
            self._basic[(ns, basic.username)] = (consumer, basic.id, basic.password_hash)
            prints.add(basic.password_hash)
        for cred in consumer.jwt:
            prepared = _ALGORITHMS[cred.algorithm].prepare_key(cred.key)
            self._jwt[(ns, cred.issuer)] = _JwtEntry(consumer, cred, prepared)
            prints.add(cred.fingerprint)
        self._fingerprints[consumer.key] = (consumer, frozenset(prints))

    def remove(self, consumer_key: str) -> None:
        """Remove a consumer and what it held (entries another consumer holds stay)."""
        entry = self._fingerprints.pop(consumer_key, None)
        if entry is None:
            return
        consumer, ns = entry[0], entry[0].namespace
        for key in consumer.keys:
            if (found := self._keys.get((ns, key.sha256))) and found.consumer is consumer:
                del self._keys[(ns, key.sha256)]
        for basic in consumer.basic:
            if (held := self._basic.get((ns, basic.username))) and held[0] is consumer:
                del self._basic[(ns, basic.username)]
        for cred in consumer.jwt:
            if (jwt_entry := self._jwt.get((ns, cred.issuer))) and jwt_entry.consumer is consumer:
                del self._jwt[(ns, cred.issuer)]

    def holder(self, consumer_key: str, fingerprint: str) -> Consumer | None:
        """The consumer, if it still exists and still holds this credential."""
        entry = self._fingerprints.get(consumer_key)
        if entry is None or fingerprint not in entry[1]:
            return None
        return entry[0]

    async def authenticate(
        self,
        route: Route,
        headers: CIMultiDictProxy[str],
        raw_query: str,
        protocols: list[str],
    ) -> Authenticated:
        if route.auth.mode == "None":
            return Authenticated(None, None)
        try:
            presented = find_credential(route.auth, headers, raw_query, protocols)
        except MalformedCredential as exc:
            raise Unauthorized(str(exc), challenges=challenges(route)) from None
        if presented is None:
            raise Unauthorized(f"no credential presented; send {describe_sources(route)}",
                               challenges=challenges(route))
        return await self.check(route, presented)

    async def check(self, route: Route, presented: Presented) -> Authenticated:
        """Verify a presented credential and the consumer's access to the route."""
        identity = await self._verify(route, presented)
        if not allows(route, identity.consumer):
            # The HTTP answer goes to the credential's holder; a close reason (FirstMessage
            # mode) is Forbidden's default, which names nobody.
            raise Forbidden(f"consumer {identity.consumer.username!r} is not allowed on this "
                            "route")
        return Authenticated(identity, presented)

    async def _verify(self, route: Route, presented: Presented) -> Identity:
        ns = route.namespace
        where = f"the {presented.source}" if presented.source != "message" else "the message"
        if presented.method == "KeyAuth":
            digest = hashlib.sha256(presented.value.encode()).hexdigest()
            identity = self._keys.get((ns, digest))
            if identity is None:
                raise Unauthorized(f"the API key in {where} is not valid",
                                   challenges=challenges(route))
            return identity
        if presented.method == "BasicAuth":
            entry = self._basic.get((ns, presented.username))
            if entry is None or not await self._passwords.verify(presented.value, entry[2]):
                raise Unauthorized("the user name or password is not valid",
                                   challenges=challenges(route))
            return Identity(entry[0], entry[1], entry[2])
        return self._verify_jwt(route, presented.value)

    def _verify_jwt(self, route: Route, token: str) -> Identity:
        def fail(message: str) -> Unauthorized:
            return Unauthorized(message, challenges=challenges(route, 'error="invalid_token"'))

        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise fail("the bearer token is not a JWT") from None
        issuer = claims.get("iss")
        entry = self._jwt.get((route.namespace, issuer)) if isinstance(issuer, str) else None
        if entry is None:
            raise fail("the token's issuer (iss) is not a consumer's")
        audience = route.auth.jwt_audience
        try:
            jwt.decode(
                token, entry.key, algorithms=[entry.credential.algorithm], issuer=issuer,
                audience=audience, leeway=JWT_LEEWAY_SECONDS,
                options={"require": ["exp", "iss"], "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise fail("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise fail("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise fail(f"the token's audience (aud) does not include {audience!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise fail(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise fail("the token's signature is not valid") from None
        return Identity(entry.consumer, entry.credential.id, entry.credential.fingerprint)


def allows(route: Route, consumer: Consumer) -> bool:
    allowed = route.auth.allowed_consumers
    return allowed is None or consumer.name in allowed


def describe_sources(route: Route) -> str:
    """Where this route accepts a credential, in words."""
    phrases = []
    auth = route.auth
    if "KeyAuth" in auth.methods:
        sources = auth.key_auth
        places = []
        if sources.header:
            places.append(f"in header {sources.header!r}")
        if sources.query:
            places.append(f"as query parameter {sources.query!r}")
        if sources.cookie:
            places.append(f"in cookie {sources.cookie!r}")
        if sources.subprotocol:
            places.append(f"as subprotocol '{KEY_SUBPROTOCOL_PREFIX}<base64url(key)>'")
        phrases.append("an API key " + _either(places))
    if "BasicAuth" in auth.methods:
        phrases.append("a user name and password in 'Authorization: Basic'")
    if "JWT" in auth.methods:
        phrases.append("a JWT " + _either([
            "in 'Authorization: Bearer'", f"as query parameter {BEARER_QUERY!r}",
            f"as subprotocol '{BEARER_SUBPROTOCOL_PREFIX}<token>'"]))
    return "; or ".join(phrases)


def _either(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def challenges(route: Route, bearer_error: str = "") -> tuple[str, ...]:
    """One WWW-Authenticate value per accepted scheme."""
    realm = f'realm="{route.namespace}/{route.name}"'
    found = []
    for method in route.auth.methods:
        if method == "KeyAuth":
            sources = route.auth.key_auth
            params = [realm]
            if sources.header:
                params.append(f'header="{sources.header}"')
            if sources.query:
                params.append(f'query="{sources.query}"')
            found.append("ApiKey " + ", ".join(params))
        elif method == "BasicAuth":
            found.append(f'Basic {realm}, charset="UTF-8"')
        else:
            found.append(f"Bearer {realm}" + (f", {bearer_error}" if bearer_error else ""))
    return tuple(found)
