"""What the upstream receives: the request target and headers of its handshake.

Three rules, each closing a way to smuggle something past the proxy:
- hop-by-hop headers and every header the proxy sets itself are dropped (the identity
  headers, and those an External auth server's answer or a provider token's claims
  fill in: ``responseHeaders``, ``identityHeader``, ``claimsToHeaders``, whether or not
  this handshake's verification filled them), and a client header whose name
  *normalizes* to one of them (``X_Consumer_Username``: CGI and WSGI servers read
  underscores as dashes) is dropped too: nothing a client sends can become an identity
  header;
- with ``hideCredentials`` (the default), every place the route's methods read a
  credential from is stripped (header, query parameter, cookie, Authorization),
  not only the one that authenticated: a second credential must not ride along;
- a credential subprotocol entry (``base64url.apikey.wsgate.io.*``,
  ``base64url.bearer.wsgate.io.*``) is never forwarded.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from aiohttp.http_parser import RawRequestMessage

from .config import Route
from .credentials import (
    BEARER_QUERY,
    BEARER_SUBPROTOCOL_PREFIX,
    KEY_SUBPROTOCOL_PREFIX,
    strip_cookie,
    strip_query,
)
from .handshake import Handshake
from .routing import quote_path

IDENTITY_HEADERS = ("X-Consumer-Username", "X-Forwarded-For", "X-Forwarded-Proto",
                    "X-Forwarded-Host")
# Hop-by-hop headers (RFC 9110 section 7.6.1), those the proxy sets itself, and the
# body's framing (a handshake has no body).
_NOT_FORWARDED = frozenset(
    h.lower().encode()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", "Sec-WebSocket-Protocol", *IDENTITY_HEADERS,
    )
)
# What the proxy answered itself in FirstMessage mode: its own key, no extensions.
_PROXY_ANSWERED = frozenset((b"sec-websocket-key", b"sec-websocket-extensions"))


def is_credential_entry(protocol: str) -> bool:
    return protocol.startswith((KEY_SUBPROTOCOL_PREFIX, BEARER_SUBPROTOCOL_PREFIX))


def forwarded_subprotocols(handshake: Handshake) -> list[str]:
    return [p for p in handshake.protocols if not is_credential_entry(p)]


@dataclass(frozen=True, slots=True)
class _RouteRules:
    """What a route drops from every handshake it forwards, worked out once per route."""

    dropped: frozenset[bytes]  # header names, normalized
    dropped_answered: frozenset[bytes]  # the same in FirstMessage mode
    cookies: tuple[str, ...]  # cookie names stripped (hideCredentials)
    queries: tuple[str, ...]  # query parameters stripped (hideCredentials)


# Routes are frozen and replaced whole by a new config, so their rules are kept by
# identity for as long as the route lives: an entry leaves when its route is freed
# (before the id can be reused), so the cache is bounded by the routes of the configs
# still in use and never keeps a past config's routes alive.
_rules: dict[int, tuple[weakref.ref[Route], _RouteRules]] = {}


def _route_rules(route: Route) -> _RouteRules:
    key = id(route)
    entry = _rules.get(key)
    if entry is not None:
        return entry[1]
    dropped = _NOT_FORWARDED | _verified_headers(route)
    cookies: tuple[str, ...] = ()
    queries: tuple[str, ...] = ()
    if route.auth.hide_credentials:
        dropped = dropped | _credential_headers(route)
        cookies, queries = _credential_cookies(route), _credential_queries(route)
    rules = _RouteRules(dropped, dropped | _PROXY_ANSWERED, cookies, queries)
    _rules[key] = (weakref.ref(route, lambda _: _rules.pop(key, None)), rules)
    return rules


def upstream_target(handshake: Handshake) -> str:
    """The path (normalized, rewritten) and query the upstream is asked for."""
    raw_query = handshake.raw_query
    if raw_query:
        for name in _route_rules(handshake.route).queries:
            raw_query = strip_query(raw_query, name)
    target = quote_path(handshake.match.upstream_path)
    return f"{target}?{raw_query}" if raw_query else target


def upstream_request(request: RawRequestMessage, handshake: Handshake, protocols: list[str],
                     peer: str, secure: bool, key: str | None = None) -> bytes:
    """The upstream's handshake request: the target, the client's end-to-end headers
    minus credentials and anything posing as the proxy's own, plus the upgrade, the
    subprotocols, identity and X-Forwarded-* (``peer``: the client's address; ``secure``:
    it came over TLS). With ``key`` (FirstMessage mode, where the
    proxy answered the client itself) the proxy's own key replaces the client's and no
    extension is offered.

    Built as bytes from the raw header lines the parser read: names and values are passed
    on as they came, never decoded and encoded again."""
    rules = _route_rules(handshake.route)
    dropped = rules.dropped if key is None else rules.dropped_answered
    connection = request.headers.get("Connection", "")
    if connection.lower() != "upgrade":  # the usual value; anything else may name more
        dropped = dropped | {_normalized(t.encode("latin-1")) for t in connection.split(",")
                             if t.strip()}
    cookies = rules.cookies
    lines = [b"GET ", upstream_target(handshake).encode("latin-1"), b" HTTP/1.1\r\n"]
    for name, value in request.raw_headers:
        normalized = _normalized(name)
        if normalized in dropped:
            continue
        if cookies and normalized == b"cookie":
            text = value.decode("latin-1")
            for cookie in cookies:
                text = strip_cookie(text, cookie)
            value = text.encode("latin-1")
            if not value:
                continue
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    if key is not None:
        lines += (b"Sec-WebSocket-Key: ", key.encode("latin-1"), b"\r\n")
    if protocols:
        lines += (b"Sec-WebSocket-Protocol: ", ", ".join(protocols).encode("latin-1"),
                  b"\r\n")
    who = handshake.who
    for name, value in who.headers:  # what a verification vouches for
        lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    if (identity := who.identity) is not None:
        lines += (b"X-Consumer-Username: ", identity.username.encode("latin-1"), b"\r\n")
    prior = request.headers.get("X-Forwarded-For")
    forwarded_for = f"{prior}, {peer}" if prior else peer
    lines += (b"X-Forwarded-For: ", forwarded_for.encode("latin-1"),
              b"\r\nX-Forwarded-Proto: ", b"https" if secure else b"http",
              b"\r\nX-Forwarded-Host: ", handshake.host.encode("latin-1"), b"\r\n\r\n")
    return b"".join(lines)


def _normalized(name: bytes) -> bytes:
    return name.strip().lower().replace(b"_", b"-")


def _credential_headers(route: Route) -> frozenset[bytes]:
    methods = route.auth.methods
    names = set()
    if "KeyAuth" in methods and route.auth.key_auth.header:
        names.add(_normalized(route.auth.key_auth.header.encode("latin-1")))
    if "BasicAuth" in methods or "JWT" in methods:
        names.add(b"authorization")
    if route.auth.external is not None:
        names.update(_normalized(n.encode("latin-1"))
                     for n in route.auth.external.request_headers)
    return frozenset(names)


def _credential_cookies(route: Route) -> tuple[str, ...]:
    auth = route.auth
    names = []
    if "KeyAuth" in auth.methods and auth.key_auth.cookie:
        names.append(auth.key_auth.cookie)
    if "JWT" in auth.methods and auth.jwt.cookie:
        names.append(auth.jwt.cookie)
    return tuple(names)


def _verified_headers(route: Route) -> frozenset[bytes]:
    """Headers only a verification may set: a client's copies never pass."""
    auth = route.auth
    external = auth.external
    if external is None and not auth.jwt.providers:
        return frozenset()
    names = set()
    if external is not None:
        names.update(_normalized(n.encode("latin-1")) for n in external.response_headers)
        if external.identity_header:
            names.add(_normalized(external.identity_header.encode("latin-1")))
    for provider in auth.jwt.providers:
        names.update(_normalized(m.header.encode("latin-1"))
                     for m in provider.claims_to_headers)
    return frozenset(names)


def _credential_queries(route: Route) -> tuple[str, ...]:
    methods = route.auth.methods
    names = []
    if "KeyAuth" in methods and route.auth.key_auth.query:
        names.append(route.auth.key_auth.query)
    if "JWT" in methods:
        names.append(BEARER_QUERY)
    return tuple(names)
