"""External auth: asking the application's own auth endpoint about a handshake.

The call is a plain ``GET`` to the route's ``url`` carrying the client headers the route
lists (default ``Cookie`` and ``Authorization``) and ``X-Forwarded-Method``, ``-Proto``
(``http``/``https``, never ``ws``), ``-Host``, ``-Uri``, ``-For`` and ``X-Original-URL``.
Never a hop-by-hop header, ``Upgrade``, ``Connection`` or a ``Sec-WebSocket-*`` header,
even when listed: an auth server that sees an upgrade request tries to upgrade or
refuses it, a known failure of other gateways' forward auth.

The answer decides:
- 2xx allows: the listed response headers go to the upstream (the client's own copies
  of them, under any spelling, are removed in forwarding.py), ``identityHeader``'s value
  becomes the session's identity, and ``Cache-Control: max-age``/``Expires`` bound the
  session's credential lifetime;
- 401/403 is the client's answer, with the auth server's ``WWW-Authenticate``,
  ``Location`` and body (at most MAX_BODY_BYTES);
- anything else (another status, a timeout, a refused connection, garbage) fails closed:
  503, logged and counted, never let through.

Allow decisions may be cached (``cacheSeconds``), keyed by a keyed hash of exactly what
the call sends, for at most that long and never longer than the answer's own
``max-age``; a 5xx or a refusal is never cached, and the cache holds at most
CACHE_ENTRIES. Calls in flight to each auth server (scheme, host and port) are bounded
(``max_concurrent``); beyond, at most ``max_waiting`` wait (each no longer than the
route's timeout), and the rest are refused at once with 503 + ``Retry-After``, so a slow
auth server cannot pile up handshakes, nor take the call slots of another route's auth
server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from . import metrics
from .config import ExternalAuth, Route
from .outbound import Answer, Outbound, OutboundError, display_url
from .refusals import AuthUnavailable, Forbidden, Overloaded, Unauthorized

log = logging.getLogger("wsgate.external_auth")

MAX_BODY_BYTES = 64 * 1024  # of a 401/403 passed to the client
CACHE_ENTRIES = 10_000
MAX_CONCURRENT = 64  # per auth server
MAX_SERVERS = 1024  # auth servers whose call bounds are kept (idle ones are dropped beyond)
MAX_WAITING = 256
MAX_IDENTITY_LENGTH = 253
MAX_HEADER_VALUE = 8 * 1024
# Of the answer's headers forwarded to the upstream (responseHeaders, names and values):
# each allowed session keeps them, and so does each cached decision.
MAX_FORWARDED_BYTES = 16 * 1024

# Never sent to the auth server, whatever the route lists: hop-by-hop headers, the
# upgrade, the handshake's own headers, and those the proxy sets itself.
_NEVER_SENT = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "content-length", "content-type", "expect", "accept-encoding", "x-original-url",
))
_NEVER_SENT_PREFIXES = ("sec-websocket-", "x-forwarded-")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_AGE = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?(\d+)"?\s*(?:,|$)', re.IGNORECASE)
_NO_STORE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:[,=]|$)", re.IGNORECASE)


def is_sendable(name: str) -> bool:
    """Whether a client header of this name may go to an auth server."""
    lowered = name.lower().replace("_", "-")
    return lowered not in _NEVER_SENT and not lowered.startswith(_NEVER_SENT_PREFIXES)


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the auth call says about the handshake besides the client's headers."""

    host: str
    target: str  # the request target as the client sent it (path and query)
    remote: str
    secure: bool
    forwarded_for: str | None  # the client's own X-Forwarded-For, if any


@dataclass(frozen=True, slots=True)
class AuthCall:
    """One auth call as sent: kept by a session for its rechecks."""

    url: str
    headers: tuple[tuple[str, str], ...]
    cache_key: bytes


@dataclass(frozen=True, slots=True)
class Allowed:
    """A 2xx answer: what the upstream gets, who it is, until when it holds."""

    headers: tuple[tuple[str, str], ...]
    identity: str | None
    valid_until: float | None  # unix time; None: the answer set no lifetime


class _Bound:
    """The calls in flight to one auth server, and those waiting for a slot."""

    def __init__(self, max_concurrent: int) -> None:
        self.slots = asyncio.Semaphore(max_concurrent)
        self.running = 0
        self.waiting = 0


class ExternalAuthClient:
    """Asks auth servers, for every route that uses External; one per proxy."""

    def __init__(self, outbound: Outbound, *, max_concurrent: int = MAX_CONCURRENT,
                 max_waiting: int = MAX_WAITING, cache_entries: int = CACHE_ENTRIES) -> None:
        self._outbound = outbound
        self._bounds: dict[str, _Bound] = {}  # by auth server: scheme://host:port
        self._in_flight: dict[bytes, asyncio.Future[Allowed]] = {}  # by cache key
        self._max_concurrent = max_concurrent
        self._max_waiting = max_waiting
        self._secret = os.urandom(32)
        self._cache: OrderedDict[bytes, tuple[float, Allowed]] = OrderedDict()
        self._cache_entries = cache_entries
        self._last_logged: dict[str, float] = {}

    def call_for(self, route: Route, headers: CIMultiDictProxy[str], inbound: Inbound
                 ) -> AuthCall:
        """The auth call a handshake makes on this route."""
        external = _external(route)
        sent: list[tuple[str, str]] = []
        for name in external.request_headers:
            if is_sendable(name):
                sent += ((name, value) for value in headers.getall(name, ()))
        proto = "https" if inbound.secure else "http"
        prior = inbound.forwarded_for
        sent += [
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Proto", proto),
            ("X-Forwarded-Host", inbound.host),
            ("X-Forwarded-Uri", inbound.target),
            ("X-Forwarded-For", f"{prior}, {inbound.remote}" if prior else inbound.remote),
            ("X-Original-URL", f"{proto}://{inbound.host}{inbound.target}"),
        ]
        digest = hashlib.blake2b(key=self._secret, digest_size=32)
        digest.update(_field(route.key) + _config_digest(external))
        for name, value in sent:  # every value exactly: two credentials, two keys
            digest.update(_field(name.lower()) + _field(value))
        return AuthCall(external.url, tuple(sent), digest.digest())

    async def check(self, route: Route, call: AuthCall, *, phase: str = "handshake"
                    ) -> Allowed:
        """The auth server's decision on a call: Allowed, or a Refusal (401/403 as the
        auth server gave them; 503 when it could not decide). Handshakes may be answered
        from the cache, or share the call in flight for exactly the same headers (100
        tabs opened with one cookie make one call); rechecks always ask, and refresh or
        evict the cached entry."""
        external = _external(route)
        if phase != "handshake" or external.cache_seconds <= 0:
            return await self._decide(route, external, call, phase)
        cached = self._cached(call.cache_key)
        if cached is not None:
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "cached").inc()
            return cached
        # No local names the shared call: a refusal raised here would otherwise hold it
        # (and it the refusal) in a cycle only the garbage collector frees.
        return await asyncio.shield(self._shared(route, external, call, phase))

    def _shared(self, route: Route, external: ExternalAuth, call: AuthCall, phase: str
                ) -> asyncio.Future[Allowed]:
        """The call in flight for these exact headers, made now if there is none."""
        shared = self._in_flight.get(call.cache_key)
        if shared is not None:
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "shared").inc()
            return shared
        # A task of its own: a handshake whose client leaves (cancelled) does not cancel
        # the call for the others waiting on it.
        shared = asyncio.ensure_future(self._decide(route, external, call, phase))
        self._in_flight[call.cache_key] = shared
        shared.add_done_callback(functools.partial(self._landed, call.cache_key))
        return shared

    def _landed(self, key: bytes, call: asyncio.Future[Allowed]) -> None:
        if self._in_flight.get(key) is call:
            del self._in_flight[key]
        if not call.cancelled() and (refused := call.exception()) is not None:
            # Retrieved (no "never retrieved" warning when none waits), and without the
            # call's frames: they hold the answer (up to its size bounds), and a task's
            # traceback is a cycle only the garbage collector would free.
            refused.__traceback__ = None

    async def _decide(self, route: Route, external: ExternalAuth, call: AuthCall,
                      phase: str) -> Allowed:
        answer = await self._ask(route, external, call, phase)
        if 200 <= answer.status < 300:
            allowed = self._allowed(route, external, answer, phase)
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "allow").inc()
            self._remember(external, call.cache_key, answer, allowed)
            return allowed
        self._cache.pop(call.cache_key, None)
        if answer.status in (401, 403):
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "deny").inc()
            raise _refusal(answer)
        raise self._failed(route, phase, f"the auth server answered {answer.status}; only "
                                         "2xx (allow), 401 and 403 (refuse) are decisions")

    async def _ask(self, route: Route, external: ExternalAuth, call: AuthCall, phase: str
                   ) -> Answer:
        bound = self._bound(call.url)
        if bound.slots.locked() and bound.waiting >= self._max_waiting:
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "overloaded").inc()
            raise Overloaded(f"too many External auth calls in progress "
                             f"({self._max_concurrent} running, {bound.waiting} waiting); "
                             "retry in a second")
        started = time.perf_counter()
        bound.waiting += 1
        try:
            async with asyncio.timeout(external.timeout_seconds):
                await bound.slots.acquire()
        except TimeoutError:
            metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "overloaded").inc()
            raise Overloaded("the External auth calls ahead of this one took too long; "
                             "retry in a second") from None
        finally:
            bound.waiting -= 1
        bound.running += 1
        try:
            remaining = max(0.001, external.timeout_seconds - (time.perf_counter() - started))
            return await self._outbound.get(call.url, list(call.headers), seconds=remaining,
                                            max_body=MAX_BODY_BYTES, ca_pem=external.ca_pem)
        except OutboundError as exc:
            raise self._failed(route, phase, f"the auth server at "
                                             f"{display_url(call.url)}: {exc}") from None
        finally:
            bound.running -= 1
            bound.slots.release()
            metrics.child(metrics.EXTERNAL_AUTH_SECONDS, route.key).observe(
                time.perf_counter() - started)

    def _bound(self, url: str) -> _Bound:
        parts = urlsplit(url)
        server = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        bound = self._bounds.get(server)
        if bound is None:
            if len(self._bounds) >= MAX_SERVERS:  # auth servers of configs long gone
                for idle in [k for k, b in self._bounds.items()
                             if b.waiting == 0 and b.running == 0]:
                    del self._bounds[idle]
            bound = self._bounds[server] = _Bound(self._max_concurrent)
        return bound

    def _allowed(self, route: Route, external: ExternalAuth, answer: Answer, phase: str
                 ) -> Allowed:
        identity = None
        if external.identity_header:
            identity = answer.headers.get(external.identity_header, "").strip()
            if not identity or len(identity) > MAX_IDENTITY_LENGTH or _CONTROL.search(identity):
                raise self._failed(route, phase, (
                    f"the auth server allowed, but its answer has no usable "
                    f"{external.identity_header!r} header (identityHeader: a value of 1 to "
                    f"{MAX_IDENTITY_LENGTH} characters)"))
        forwarded = []
        size = 0
        for name in external.response_headers:
            for value in answer.headers.getall(name, ()):
                if len(value) > MAX_HEADER_VALUE or _CONTROL.search(value):
                    raise self._failed(route, phase, f"the auth server's {name!r} header is "
                                                     "too long or holds control characters")
                size += len(name) + len(value.encode("utf-8", "surrogateescape"))
                if size > MAX_FORWARDED_BYTES:
                    raise self._failed(route, phase, (
                        f"the auth server allowed, but the headers of its answer to forward "
                        f"(responseHeaders) exceed {MAX_FORWARDED_BYTES} bytes in all"))
                forwarded.append((name, value))
        fresh_for, _ = freshness(answer.headers)
        valid_until = time.time() + fresh_for if fresh_for else None
        return Allowed(tuple(forwarded), identity, valid_until)

    def _failed(self, route: Route, phase: str, message: str) -> AuthUnavailable:
        metrics.child(metrics.EXTERNAL_AUTH, route.key, phase, "error").inc()
        now = time.monotonic()
        if now - self._last_logged.get(route.key, 0.0) >= 1.0:  # at most a line a second
            self._last_logged[route.key] = now
            log.warning("external auth failed", extra={"route": route.key, "phase": phase,
                                                       "error": message})
        # The details (the auth server's address, network and TLS errors) are the
        # operator's, in the log and the metric; the client learns only that it may retry.
        return AuthUnavailable("authentication is unavailable: the auth server gave no "
                               "usable answer; retry later")

    # -- the cache -------------------------------------------------------------------
    def _cached(self, key: bytes) -> Allowed | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[1]

    def _remember(self, external: ExternalAuth, key: bytes, answer: Answer,
                  allowed: Allowed) -> None:
        if external.cache_seconds <= 0:
            return
        fresh_for, uncacheable = freshness(answer.headers)
        ttl = external.cache_seconds if fresh_for is None else min(external.cache_seconds,
                                                                    fresh_for)
        if uncacheable or ttl <= 0:
            self._cache.pop(key, None)
            return
        self._cache[key] = (time.monotonic() + ttl, allowed)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)


def _field(text: str) -> bytes:
    """One field of a cache key: length-prefixed and lossless (aiohttp decodes header
    values as UTF-8, undecodable bytes as surrogates), so no two fields run together and
    no two values encode alike."""
    data = text.encode("utf-8", "surrogateescape")
    return len(data).to_bytes(4, "big") + data


def _external(route: Route) -> ExternalAuth:
    external = route.auth.external
    assert external is not None, "the config validates External with its settings"
    return external


@functools.lru_cache(maxsize=4096)
def _config_digest(external: ExternalAuth) -> bytes:
    """What a cached decision was made under: a changed setting misses the cache."""
    return hashlib.sha256(external.model_dump_json().encode()).digest()


def _refusal(answer: Answer) -> Unauthorized | Forbidden:
    """The auth server's 401/403, to be passed to the client as it is."""
    headers = [("Location", v) for v in answer.headers.getall("Location", ())]
    if answer.truncated:
        body = (f"refused by the auth server ({answer.status}); its answer was longer than "
                f"{MAX_BODY_BYTES} bytes and is not shown\n").encode()
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    else:
        body = answer.body
        if content_type := answer.headers.get("Content-Type"):
            headers.append(("Content-Type", content_type))
    headers = [(n, v) for n, v in headers if len(v) <= MAX_HEADER_VALUE and not _CONTROL.search(v)]
    challenges = tuple(v for v in answer.headers.getall("WWW-Authenticate", ())
                       if len(v) <= MAX_HEADER_VALUE and not _CONTROL.search(v))
    kind = Unauthorized if answer.status == 401 else Forbidden
    return kind(f"refused by the auth server ({answer.status})", challenges=challenges,
                headers=headers, body=body, reason="refused by the auth server")


def freshness(headers: CIMultiDictProxy[str]) -> tuple[float | None, bool]:
    """How long an answer stays fresh (``Cache-Control: max-age``, else ``Expires`` less
    ``Date``), None when it does not say; and whether it forbids caching (``no-store``,
    ``no-cache``). A ``max-age`` of 0 or an ``Expires`` in the past is 0: fresh for no
    time, which bounds nothing (an auth server says that to disable caching, not to
    end sessions at once)."""
    control = ",".join(headers.getall("Cache-Control", ()))
    uncacheable = bool(_NO_STORE.search(control))
    if found := _MAX_AGE.search(control):
        return float(min(int(found.group(1)), 10**9)), uncacheable
    expires = headers.get("Expires")
    if expires is None:
        return None, uncacheable
    try:
        until = parsedate_to_datetime(expires).timestamp()
        date = headers.get("Date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0, uncacheable  # an invalid Expires means "already expired" (RFC 9111)
    return max(0.0, until - now), uncacheable
