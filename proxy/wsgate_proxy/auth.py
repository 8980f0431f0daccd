"""Verifying a presented credential: against the compiled consumers, an identity
provider's keys, or the application's own auth server.

API keys are compared by SHA-256 digest (the proxy never holds a key in the clear);
passwords against salted PBKDF2 hashes, through a cache of successes; JWTs by signature
(PyJWT), ``exp`` (required), ``nbf`` and ``iat`` with the route's clock skew, and
``aud`` when the route names an audience. A token's ``iss`` selects one of the route's
identity providers (oidc.py; no WsConsumer needed) or else the consumer holding that
issuer. ``External`` asks the route's auth server (external_auth.py).

Whatever verified it, the result is an ``Authenticated``: who (an ``Identity``, or
nobody), until when the credential holds (a JWT's ``exp``, an External answer's
lifetime), and the headers the upstream gets from the verification.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import jwt
from multidict import CIMultiDictProxy

from .config import AuthMethod, Consumer, JwtCredential, Route
from .credentials import (
    BEARER_QUERY,
    BEARER_SUBPROTOCOL_PREFIX,
    KEY_SUBPROTOCOL_PREFIX,
    MalformedCredential,
    Presented,
    find_credential,
)
from .external_auth import AuthCall, ExternalAuthClient, Inbound
from .jwks import KeySets
from .oidc import decode, provider_for, verify
from .passwords import PasswordVerifier
from .refusals import Forbidden, Unauthorized

_ALGORITHMS = jwt.algorithms.get_default_algorithms()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session belongs to."""

    key: str  # what per-consumer limits, ConsistentHash and revocation know it by
    username: str  # X-Consumer-Username, the access log
    credential_id: str
    # What the credential was when it was verified (a key's digest, a password's hash,
    # a JWT key's fingerprint): a live session is revoked when its consumer no longer
    # holds a credential with this fingerprint.
    fingerprint: str
    consumer: Consumer | None = None  # None: an identity provider's or an auth server's

    @property
    def max_connections(self) -> int | None:
        """The WsConsumer's maxConnections (on all routes together); None for others."""
        return self.consumer.max_connections if self.consumer is not None else None


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: Identity | None  # None on a public route, or External without identityHeader
    presented: Presented | None
    method: AuthMethod | None = None
    # What vouched for it besides the consumers: the External url, a provider's issuer.
    grant: str | None = None
    valid_until: float | None = None  # unix time the credential ends, skew included
    headers: tuple[tuple[str, str], ...] = ()  # for the upstream request
    external_call: AuthCall | None = None  # what a recheck asks again


@dataclass(frozen=True, slots=True)
class _JwtEntry:
    consumer: Consumer
    credential: JwtCredential
    key: Any  # prepared once per config: parsing a PEM key per handshake is slow


class Authenticator:
    def __init__(self, consumers: tuple[Consumer, ...], passwords: PasswordVerifier,
                 keysets: KeySets | None = None,
                 external: ExternalAuthClient | None = None) -> None:
        self._passwords = passwords
        self._keysets = keysets
        self._external = external
        self._keys: dict[tuple[str, str], Identity] = {}
        self._basic: dict[tuple[str, str], tuple[Consumer, str, str]] = {}
        self._jwt: dict[tuple[str, str], _JwtEntry] = {}
        self._fingerprints: dict[str, tuple[Consumer, frozenset[str]]] = {}
        for consumer in consumers:
            self.add(consumer)

    def copy(self) -> Authenticator:
        """An authenticator of its own to change (a dict copy each: no Python loop per
        consumer), for the next config while this one keeps serving."""
        other = Authenticator((), self._passwords, self._keysets, self._external)
        other._keys, other._basic = dict(self._keys), dict(self._basic)
        other._jwt, other._fingerprints = dict(self._jwt), dict(self._fingerprints)
        return other

    def add(self, consumer: Consumer) -> None:
        """Add a consumer (one of the same key is removed first)."""
        self.remove(consumer.key)
        ns = consumer.namespace
        prints = set()
        for key in consumer.keys:
            self._keys[(ns, key.sha256)] = _of(consumer, key.id, key.sha256)
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
        inbound: Inbound | None = None,
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
        if presented.method == "External":
            assert inbound is not None, "External needs the handshake's request"
            return await self._ask_external(route, presented, headers, inbound)
        return await self.check(route, presented)

    async def check(self, route: Route, presented: Presented) -> Authenticated:
        """Verify a presented credential and the consumer's access to the route."""
        who = await self._verify(route, presented)
        consumer = who.identity.consumer if who.identity is not None else None
        if consumer is not None and not allows(route, consumer):
            # The HTTP answer goes to the credential's holder; a close reason (FirstMessage
            # mode) is Forbidden's default, which names nobody.
            raise Forbidden(f"consumer {consumer.username!r} is not allowed on this route")
        return who

    async def _ask_external(self, route: Route, presented: Presented,
                            headers: CIMultiDictProxy[str], inbound: Inbound) -> Authenticated:
        assert self._external is not None
        assert route.auth.external is not None
        call = self._external.call_for(route, headers, inbound)
        allowed = await self._external.check(route, call)
        url = route.auth.external.url
        identity = None
        if allowed.identity is not None:
            identity = Identity(f"external:{allowed.identity}", allowed.identity, "external",
                                f"external:{url}")
        return Authenticated(identity, presented, "External", url, allowed.valid_until,
                             allowed.headers, call)

    async def _verify(self, route: Route, presented: Presented) -> Authenticated:
        ns = route.namespace
        where = f"the {presented.source}" if presented.source != "message" else "the message"
        if presented.method == "KeyAuth":
            digest = hashlib.sha256(presented.value.encode()).hexdigest()
            identity = self._keys.get((ns, digest))
            if identity is None:
                raise Unauthorized(f"the API key in {where} is not valid",
                                   challenges=challenges(route))
            return Authenticated(identity, presented, "KeyAuth")
        if presented.method == "BasicAuth":
            entry = self._basic.get((ns, presented.username))
            if entry is None or not await self._passwords.verify(presented.value, entry[2]):
                raise Unauthorized("the user name or password is not valid",
                                   challenges=challenges(route))
            return Authenticated(_of(entry[0], entry[1], entry[2]), presented, "BasicAuth")
        if presented.method == "JWT":
            return await self._verify_jwt(route, presented)
        raise Unauthorized(f"{presented.method} cannot be presented this way",
                           challenges=challenges(route))

    async def _verify_jwt(self, route: Route, presented: Presented) -> Authenticated:
        def fail(message: str) -> Unauthorized:
            return Unauthorized(message, challenges=challenges(route, 'error="invalid_token"'))

        def forbid(message: str) -> Forbidden:
            return Forbidden(message, challenges=challenges(route, 'error="insufficient_scope"'))

        token = presented.value
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise fail("the bearer token is not a JWT") from None
        issuer = claims.get("iss")
        skew = route.auth.jwt.clock_skew_seconds
        provider = provider_for(route, issuer)
        if provider is not None and self._keysets is not None:
            keyset = self._keysets.get(provider)
            granted = await verify(route, provider, keyset, token, fail, forbid)
            identity = Identity(f"oidc:{provider.issuer}:{granted.identity}", granted.identity,
                                "provider", f"provider:{provider.issuer}")
            return Authenticated(identity, presented, "JWT", provider.issuer,
                                 granted.expires + skew, granted.headers)
        entry = self._jwt.get((route.namespace, issuer)) if isinstance(issuer, str) else None
        if entry is None:
            raise fail("the token's issuer (iss) is neither an identity provider of this "
                       "route nor a consumer's")
        audience = route.auth.jwt.audience
        verified = decode(token, entry.key, [entry.credential.algorithm],
                          issuer=entry.credential.issuer,
                          audiences=(audience,) if audience else (), leeway=skew, fail=fail)
        identity = _of(entry.consumer, entry.credential.id, entry.credential.fingerprint)
        return Authenticated(identity, presented, "JWT", valid_until=float(verified["exp"]) + skew)


def _of(consumer: Consumer, credential_id: str, fingerprint: str) -> Identity:
    return Identity(consumer.key, consumer.username, credential_id, fingerprint, consumer)


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
        places = ["in 'Authorization: Bearer'", f"as query parameter {BEARER_QUERY!r}",
                  f"as subprotocol '{BEARER_SUBPROTOCOL_PREFIX}<token>'"]
        if auth.jwt.cookie:
            places.append(f"in cookie {auth.jwt.cookie!r}")
        phrases.append("a JWT " + _either(places))
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
        elif method == "JWT":
            found.append(f"Bearer {realm}" + (f", {bearer_error}" if bearer_error else ""))
        # External: the auth server's own answer carries its challenges
    return tuple(found)
