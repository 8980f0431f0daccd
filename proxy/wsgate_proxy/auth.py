"""Verifying the credential of a handshake against the compiled consumers.

API keys are compared by SHA-256 digest: the proxy never holds a key in the clear,
and a dictionary lookup on the digest reveals nothing about the key's bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .config import Consumer, Route
from .credentials import KEY_SUBPROTOCOL_PREFIX, MalformedCredential, PresentedKey, find_key


@dataclass(frozen=True, slots=True)
class Identity:
    consumer: Consumer
    credential_id: str
    # What the credential was when it was verified (a key's digest): a live session is
    # revoked when its consumer no longer holds a credential with this fingerprint.
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    identity: Identity | None  # None on a route with auth mode None
    presented: PresentedKey | None


class AuthFailure(Exception):
    """A handshake refused by authentication (401) or access control (403)."""

    def __init__(self, status: int, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


class Authenticator:
    def __init__(self, consumers: tuple[Consumer, ...]) -> None:
        self._keys: dict[tuple[str, str], Identity] = {}
        self._fingerprints: dict[str, tuple[Consumer, frozenset[str]]] = {}
        for consumer in consumers:
            for key in consumer.keys:
                identity = Identity(consumer, key.id, key.sha256)
                self._keys[(consumer.namespace, key.sha256)] = identity
            self._fingerprints[consumer.key] = (
                consumer, frozenset(k.sha256 for k in consumer.keys))

    def holder(self, consumer_key: str, fingerprint: str) -> Consumer | None:
        """The consumer, if it still exists and still holds this credential."""
        entry = self._fingerprints.get(consumer_key)
        if entry is None or fingerprint not in entry[1]:
            return None
        return entry[0]

    def authenticate(
        self,
        route: Route,
        headers: CIMultiDictProxy[str],
        raw_query: str,
        protocols: list[str],
    ) -> Authenticated:
        auth = route.auth
        if auth.mode == "None":
            return Authenticated(None, None)
        sources = auth.key_auth
        try:
            presented = find_key(sources, headers, raw_query, protocols)
        except MalformedCredential as exc:
            raise AuthFailure(401, str(exc), key_challenge(route)) from None
        if presented is None:
            raise AuthFailure(
                401,
                f"no API key presented; send it {describe_key_sources(route)}",
                key_challenge(route),
            )
        digest = hashlib.sha256(presented.value.encode()).hexdigest()
        identity = self._keys.get((route.namespace, digest))
        if identity is None:
            raise AuthFailure(
                401, f"the API key in the {presented.source} is not valid", key_challenge(route)
            )
        if not allows(route, identity.consumer):
            raise AuthFailure(
                403, f"consumer {identity.consumer.username!r} is not allowed on this route"
            )
        return Authenticated(identity, presented)


def allows(route: Route, consumer: Consumer) -> bool:
    allowed = route.auth.allowed_consumers
    return allowed is None or consumer.name in allowed


def describe_key_sources(route: Route) -> str:
    sources = route.auth.key_auth
    options = []
    if sources.header:
        options.append(f"in header {sources.header!r}")
    if sources.query:
        options.append(f"as query parameter {sources.query!r}")
    if sources.cookie:
        options.append(f"in cookie {sources.cookie!r}")
    if sources.subprotocol:
        options.append(f"as subprotocol '{KEY_SUBPROTOCOL_PREFIX}<base64url(key)>'")
    return ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + options[-1]


def key_challenge(route: Route) -> str:
    sources = route.auth.key_auth
    params = [f'realm="{route.namespace}/{route.name}"']
    if sources.header:
        params.append(f'header="{sources.header}"')
    if sources.query:
        params.append(f'query="{sources.query}"')
    return "ApiKey " + ", ".join(params)
