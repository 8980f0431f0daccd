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

from aiohttp import web

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
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", "Sec-WebSocket-Protocol", *IDENTITY_HEADERS,
    )
)


def is_credential_entry(protocol: str) -> bool:
    return protocol.startswith((KEY_SUBPROTOCOL_PREFIX, BEARER_SUBPROTOCOL_PREFIX))


def forwarded_subprotocols(handshake: Handshake) -> list[str]:
    return [p for p in handshake.protocols if not is_credential_entry(p)]


def upstream_target(handshake: Handshake) -> str:
    """The path (normalized, rewritten) and query the upstream is asked for."""
    raw_query = handshake.raw_query
    auth = handshake.route.auth
    if auth.hide_credentials and raw_query:
        for name in _credential_queries(handshake.route):
            raw_query = strip_query(raw_query, name)
    target = quote_path(handshake.match.upstream_path)
    return f"{target}?{raw_query}" if raw_query else target


def upstream_headers(
    request: web.BaseRequest, handshake: Handshake, protocols: list[str]
) -> list[tuple[str, str]]:
    """The client's end-to-end headers, minus credentials and anything posing as the
    proxy's own, plus the upgrade, the subprotocols, identity and X-Forwarded-*."""
    route = handshake.route
    connection_tokens = {
        _normalized(t) for t in request.headers.get("Connection", "").split(",") if t.strip()
    }
    dropped = set(_NOT_FORWARDED) | connection_tokens | _verified_headers(route)
    cookies: list[str] = []
    if route.auth.hide_credentials:
        dropped |= _credential_headers(route)
        cookies = _credential_cookies(route)
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1")
        if _normalized(name) in dropped:
            continue
        value = raw_value.decode("latin-1")
        if cookies and name.lower() == "cookie":
            for cookie in cookies:
                value = strip_cookie(value, cookie)
            if not value:
                continue
        headers.append((name, value))
    headers += [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if protocols:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    who = handshake.who
    headers += who.headers
    if (identity := who.identity) is not None:
        headers.append(("X-Consumer-Username", identity.username))
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    headers.append(("X-Forwarded-Proto", "https" if request.secure else "http"))
    headers.append(("X-Forwarded-Host", handshake.host))
    return headers


def _normalized(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _credential_headers(route: Route) -> set[str]:
    methods = route.auth.methods
    names = set()
    if "KeyAuth" in methods and route.auth.key_auth.header:
        names.add(_normalized(route.auth.key_auth.header))
    if "BasicAuth" in methods or "JWT" in methods:
        names.add("authorization")
    if route.auth.external is not None:
        names.update(_normalized(n) for n in route.auth.external.request_headers)
    return names


def _credential_cookies(route: Route) -> list[str]:
    auth = route.auth
    names = []
    if "KeyAuth" in auth.methods and auth.key_auth.cookie:
        names.append(auth.key_auth.cookie)
    if "JWT" in auth.methods and auth.jwt.cookie:
        names.append(auth.jwt.cookie)
    return names


def _verified_headers(route: Route) -> set[str]:
    """Headers only a verification may set: a client's copies never pass."""
    names = set()
    external = route.auth.external
    if external is not None:
        names.update(_normalized(n) for n in external.response_headers)
        if external.identity_header:
            names.add(_normalized(external.identity_header))
    for provider in route.auth.jwt.providers:
        names.update(_normalized(m.header) for m in provider.claims_to_headers)
    return names


def _credential_queries(route: Route) -> list[str]:
    methods = route.auth.methods
    names = []
    if "KeyAuth" in methods and route.auth.key_auth.query:
        names.append(route.auth.key_auth.query)
    if "JWT" in methods:
        names.append(BEARER_QUERY)
    return names
