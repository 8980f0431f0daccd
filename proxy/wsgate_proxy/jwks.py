"""Identity providers' signing keys: discovered, fetched and kept fresh off the handshake path.

For each OpenID Connect provider the config names, a ``KeySet`` fetches the provider's
JWKS (its ``jwksUri``, or the ``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``,
whose ``issuer`` must be the configured one) in a background task, and again every
REFRESH_SECONDS (or the key set's ``Cache-Control: max-age``, within bounds). Handshakes
read the keys held; they never wait for the IdP, except:
- before the first key set arrived, a handshake waits for the fetch in flight (at most
  FETCH_TIMEOUT_SECONDS), then gets 503;
- a token signed with a key not held (an unknown ``kid``, or no ``kid`` and no held key
  verifies it) triggers one refetch, shared by every handshake that asks meanwhile and
  at most one per MIN_REFETCH_SECONDS, so tokens with garbage ``kid``s cannot make the
  proxy hammer the IdP.
A fetch that fails (IdP down, garbage, too large, no usable key) keeps the last good keys.

Algorithms come from the keys: RSA keys (2048 bits or more) verify RS256/384/512 and
PS256/384/512, EC keys ES256/384/512 by curve, OKP keys (Ed25519, Ed448) EdDSA; a key
whose ``alg`` names one of those verifies that one only. ``oct`` (HMAC) keys and ``alg:
none`` are never used: a JWKS key can never be confused with a shared secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from . import metrics
from .config import JwtProvider
from .external_auth import freshness
from .outbound import Outbound, OutboundError, display_url

log = logging.getLogger("wsgate.jwks")

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_JWKS_BYTES = 512 * 1024
MAX_KEYS = 64
FETCH_TIMEOUT_SECONDS = 5.0
REFRESH_SECONDS = 300.0
MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS = 60.0, 3600.0
MIN_REFETCH_SECONDS = 5.0
RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 60.0
MIN_RSA_BITS = 2048

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ASYMMETRIC = RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}


class FetchError(Exception):
    """A discovery document or key set that could not be fetched or used."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str | None
    algorithms: frozenset[str]
    key: Any  # a cryptography public key, prepared once


def signing_key(jwk: object) -> SigningKey | None:
    """The key of one JWK entry, or None when it is not a usable signing key."""
    if not isinstance(jwk, dict):
        return None
    kty, alg, kid, crv = jwk.get("kty"), jwk.get("alg"), jwk.get("kid"), jwk.get("crv")
    # The IdP's document is untrusted input: a field of the wrong type (a list where a
    # string belongs) makes the key unusable, never a TypeError out of a lookup.
    if (jwk.get("use", "sig") != "sig" or not all(
            v is None or isinstance(v, str) for v in (kty, alg, kid, crv))):
        return None
    if kty == "RSA":
        allowed = RSA_ALGORITHMS
    elif kty == "EC" and crv in _EC_ALGORITHMS:
        allowed = frozenset({_EC_ALGORITHMS[crv]})
    elif kty == "OKP" and crv in ("Ed25519", "Ed448"):
        allowed = frozenset({"EdDSA"})
    else:
        return None  # oct (HMAC) keys and anything unknown are never used
    if alg is not None:
        if alg not in allowed:
            return None
        allowed = frozenset({alg})
    try:
        key = jwt.PyJWK(jwk, algorithm=next(iter(sorted(allowed)))).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if hasattr(key, "private_bytes"):
        return None  # a published private key is a broken IdP: trust none of it
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return None
    return SigningKey(kid, allowed, key)


def parse_jwks(body: bytes) -> tuple[SigningKey, ...]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FetchError("the key set is not JSON") from None
    except RecursionError:  # [[[[... nested deeper than the parser goes, within the size cap
        raise FetchError("the key set is JSON nested too deeply") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise FetchError("the key set has no 'keys' list")
    if len(entries) > MAX_KEYS:
        raise FetchError(f"the key set holds {len(entries)} keys; at most {MAX_KEYS} are read")
    keys = tuple(k for k in map(signing_key, entries) if k is not None)
    if not keys:
        raise FetchError("the key set holds no usable signing key (RSA of 2048 bits or more, "
                         "EC P-256/384/521, Ed25519/Ed448)")
    return keys


class KeySet:
    """One provider's signing keys, kept fresh by a background task."""

    def __init__(self, issuer: str, jwks_uri: str | None, ca_pem: str | None,
                 outbound: Outbound) -> None:
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.ca_pem = ca_pem
        self.keys: tuple[SigningKey, ...] = ()
        self.error: str | None = None  # why the last fetch failed (None after a good one)
        self.fetched_at: float | None = None
        self._outbound = outbound
        self._discovered: str | None = None
        self._inflight: asyncio.Task[float | None] | None = None
        self._last_started = float("-inf")
        self._refresher: asyncio.Task[None] | None = None

    # -- what handshakes call ---------------------------------------------------------
    def candidates(self, kid: str | None, alg: str) -> list[SigningKey]:
        return [k for k in self.keys
                if alg in k.algorithms and (kid is None or k.kid == kid)]

    async def first_keys(self) -> None:
        """Before any key set arrived: wait (bounded) for the fetch in flight, if one is;
        else the background task is retrying (backing off) and there is nothing to wait
        for: a down IdP is not asked once per handshake."""
        self.start()
        if not self.keys and self._inflight is not None and not self._inflight.done():
            await self._wait(self._inflight)

    async def refetch(self) -> bool:
        """Fetch again now because a token names a key not held; True once a fetch
        completed for it. At most one per MIN_REFETCH_SECONDS; handshakes asking while
        one is in flight share it."""
        idle = self._inflight is None or self._inflight.done()
        if idle and time.monotonic() - self._last_started < MIN_REFETCH_SECONDS:
            return False
        await self._wait(self._fetch())
        return True

    # -- the background task ----------------------------------------------------------
    def start(self) -> None:
        if self._refresher is None:
            self._fetch()  # at once: a handshake arriving now waits for this one
            self._refresher = asyncio.create_task(self._refresh())

    async def stop(self) -> None:
        for task in (self._refresher, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _refresh(self) -> None:
        failures = 0
        while True:
            refresh_in = await self._fetch()
            if refresh_in is None:
                failures += 1
                refresh_in = min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** (failures - 1))
            else:
                failures = 0
            await asyncio.sleep(refresh_in)

    async def _wait(self, fetch: asyncio.Task[float | None]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(fetch), FETCH_TIMEOUT_SECONDS + 1)

    def _fetch(self) -> asyncio.Task[float | None]:
        if self._inflight is None or self._inflight.done():
            self._last_started = time.monotonic()
            self._inflight = asyncio.create_task(self._fetch_once())
        return self._inflight

    async def _fetch_once(self) -> float | None:
        """Fetch the key set; seconds until the next refresh, or None when it failed (the
        keys held stay)."""
        try:
            uri = self.jwks_uri or self._discovered or await self._discover()
            try:
                answer = await self._get(uri, MAX_JWKS_BYTES, "key set")
            except FetchError:
                self._discovered = None  # the provider may have moved it: discover again
                raise
            keys = parse_jwks(answer.body)
        except Exception as exc:  # whatever the IdP sent, the refresher lives on
            if not isinstance(exc, FetchError):
                log.exception("identity provider keys could not be read",
                              extra={"issuer": self.issuer})
            self.error = str(exc)[:300] if isinstance(exc, FetchError) else (
                f"the key set could not be read ({type(exc).__name__})")
            metrics.JWKS_FETCHES.labels(self.issuer, "error").inc()
            log.warning("identity provider keys not fetched; the last good keys stay",
                        extra={"issuer": self.issuer, "error": self.error,
                               "keys_held": len(self.keys)})
            return None
        self.keys, self.error, self.fetched_at = keys, None, time.time()
        metrics.JWKS_FETCHES.labels(self.issuer, "ok").inc()
        metrics.JWKS_KEYS.labels(self.issuer).set(len(keys))
        fresh_for, _ = freshness(answer.headers)
        if fresh_for is None:
            return REFRESH_SECONDS
        return min(MAX_REFRESH_SECONDS, max(MIN_REFRESH_SECONDS, fresh_for))

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        answer = await self._get(url, MAX_DOCUMENT_BYTES, "discovery document")
        try:
            document = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError):
            raise FetchError(f"{display_url(url)}: not JSON") from None
        if not isinstance(document, dict):
            raise FetchError(f"{display_url(url)}: not a JSON object")
        if document.get("issuer") != self.issuer:
            named = str(document.get("issuer"))[:200]
            raise FetchError(f"{display_url(url)} names issuer {named!r}, not {self.issuer!r}")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise FetchError(f"{display_url(url)} has no http(s) jwks_uri")
        self._discovered = uri
        return uri

    async def _get(self, url: str, limit: int, what: str) -> Any:
        try:
            answer = await self._outbound.get(url, [("Accept", "application/json")],
                                              seconds=FETCH_TIMEOUT_SECONDS, max_body=limit,
                                              ca_pem=self.ca_pem)
        except OutboundError as exc:
            raise FetchError(f"{what} at {display_url(url)}: {exc}") from None
        if answer.status != 200:
            raise FetchError(f"{what} at {display_url(url)}: answered {answer.status}")
        if answer.truncated:
            raise FetchError(f"{what} at {display_url(url)}: larger than {limit} bytes")
        return answer


class KeySets:
    """Every provider's KeySet, by what identifies its keys (issuer, JWKS URI, CA)."""

    def __init__(self, outbound: Outbound) -> None:
        self._outbound = outbound
        self._sets: dict[tuple[str, str | None, str | None], KeySet] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    @staticmethod
    def _key(provider: JwtProvider) -> tuple[str, str | None, str | None]:
        return (provider.issuer, provider.jwks_uri, provider.ca_pem)

    def sync(self, providers: Iterable[JwtProvider]) -> None:
        """Hold key sets for exactly these providers: new ones start fetching at once
        (when a loop runs), removed ones stop."""
        wanted = {self._key(p): p for p in providers}
        for key in [k for k in self._sets if k not in wanted]:
            removed = self._sets.pop(key)
            if removed.issuer not in {k[0] for k in self._sets} | {k[0] for k in wanted}:
                metrics.forget_issuer(removed.issuer)
            with contextlib.suppress(RuntimeError):
                stopping = asyncio.get_running_loop().create_task(removed.stop())
                # The loop holds tasks weakly: keep this one until it is done.
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
        for key, provider in wanted.items():
            if key not in self._sets:
                self._sets[key] = KeySet(provider.issuer, provider.jwks_uri, provider.ca_pem,
                                         self._outbound)
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop()
                    self._sets[key].start()

    def get(self, provider: JwtProvider) -> KeySet:
        found = self._sets.get(self._key(provider))
        if found is None:  # a snapshot older than the last sync: serve it all the same
            found = self._sets[self._key(provider)] = KeySet(
                provider.issuer, provider.jwks_uri, provider.ca_pem, self._outbound)
        return found

    def summary(self) -> list[dict[str, Any]]:
        """Each provider's keys as GET /config shows them (key ids, never key material)."""
        return [{"issuer": k.issuer, "keys": [key.kid for key in k.keys],
                 "fetchedAt": k.fetched_at, "error": k.error} for k in self._sets.values()]

    async def close(self) -> None:
        for keyset in self._sets.values():
            await keyset.stop()
