"""Reading a client's handshake: what it asks for, checked strictly, fixed once.

``read_handshake`` takes one snapshot of the live config and either refuses the
request (a ``Refusal``: 400, 404, 426, 503) or returns a frozen ``Handshake``: the
config it is served from, the route it matched, the normalized path, and later
who authenticated. Everything after that reads the handshake, never the live
config again, so a config swap during an await (a password check, FirstMessage's
wait, a dial) cannot change the route under a handshake half-way.

Strictness is deliberate: anything a proxy and an upstream could read two ways (a
Host with userinfo or two ports, duplicated WebSocket headers, a body on the GET)
is refused rather than guessed at, so it can never reach a weaker route.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp.http_parser import RawRequestMessage

from .auth import Authenticated
from .config import Route
from .credentials import offered_subprotocols
from .refusals import BadRequest, Forbidden, NoRoute, Unavailable, UpgradeRequired
from .routing import BadPath, Match, normalize_path

if TYPE_CHECKING:
    from .runtime import ActiveConfig

ANONYMOUS = Authenticated(None, None)

# RFC 9110 section 7.2 / RFC 3986: a reg-name or an IP literal, then an optional port.
# No userinfo ('@'), no second port.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::([0-9]{1,5}))?")
# Headers a handshake carries once; a second copy could be read differently upstream.
_SINGLE = ("Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Upgrade", "Content-Length")


@dataclass(frozen=True, slots=True)
class Handshake:
    """One handshake as the proxy serves it; set once, never changed (a copy with
    ``who`` filled in is made when authentication succeeds)."""

    # The config snapshot this handshake is served from, whole; None once the session
    # it opened started (settled).
    active: ActiveConfig | None
    match: Match
    host: str
    path: str  # normalized
    raw_query: str
    protocols: tuple[str, ...]  # the subprotocols the client offered, in its order
    who: Authenticated = field(default=ANONYMOUS)

    @property
    def route(self) -> Route:
        return self.match.route

    def authenticated(self, who: Authenticated) -> Handshake:
        """This handshake, with who authenticated it."""
        return Handshake(self.active, self.match, self.host, self.path, self.raw_query,
                         self.protocols, who)

    def settled(self) -> Handshake:
        """This handshake without its config snapshot (a live session's). The constructor,
        not ``dataclasses.replace``: once per session, and replace costs 2.9 us to its 1.4."""
        return Handshake(None, self.match, self.host, self.path, self.raw_query,
                         self.protocols, self.who)

    @property
    def consumer_key(self) -> str | None:
        """Who the session belongs to, for limits and ConsistentHash: a WsConsumer, or an
        identity an auth server or an identity provider vouched for."""
        identity = self.who.identity
        return identity.key if identity is not None else None


def read_handshake(request: RawRequestMessage, active: ActiveConfig | None) -> Handshake:
    """The handshake a request head makes, or a Refusal saying what is wrong with it."""
    if active is None:
        raise Unavailable("the proxy has no configuration yet", reason="not ready")
    raw_path, _, raw_query = request.path.partition("?")
    try:
        path = normalize_path(raw_path)
    except (BadPath, UnicodeDecodeError) as exc:
        raise BadRequest(f"bad request path: {exc}") from None
    host = _host(request)
    match = active.router.match(host, path)
    if match is None:
        raise NoRoute(f"no route for host {host!r} path {path!r}")
    return Handshake(active, match, host, path, raw_query,
                     tuple(offered_subprotocols(request.headers)))


def check_upgrade(request: RawRequestMessage, route: Route) -> None:
    """Refuse what is not a well-formed WebSocket handshake this route accepts."""
    headers = request.headers
    if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in (
            t.strip() for t in headers.get("Connection", "").lower().split(",")):
        raise UpgradeRequired(
            "this path serves WebSocket only: send a GET with 'Upgrade: websocket' "
            "and 'Connection: Upgrade'",
            headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")))
    if request.method != "GET":
        raise BadRequest(f"a WebSocket handshake is a GET, not {request.method}")
    if request.version < (1, 1):
        raise BadRequest("a WebSocket handshake needs HTTP/1.1 (RFC 6455 section 4.1)")
    for name in _SINGLE:
        if len(headers.getall(name, ())) > 1:
            raise BadRequest(f"header {name!r} appears more than once")
    if "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() != "0":
        raise BadRequest("a WebSocket handshake carries no body (no Content-Length or "
                         "Transfer-Encoding)")
    if headers.get("Sec-WebSocket-Version") != "13":
        raise BadRequest("only WebSocket version 13 is supported", status=426,
                         headers=(("Sec-WebSocket-Version", "13"),))
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        raise BadRequest("Sec-WebSocket-Key must be 16 random bytes in base64") from None
    if route.allowed_origins:
        origin = headers.get("Origin", "").lower()
        if origin not in route.allowed_origins:
            raise Forbidden(f"origin {origin or '(none)'!r} is not allowed on this route",
                            reason="origin not allowed")


def _host(request: RawRequestMessage) -> str:
    hosts = request.headers.getall("Host", ())
    if len(hosts) != 1:
        raise BadRequest("a request needs exactly one Host header" if hosts else
                         "a request needs a Host header (HTTP/1.1)")
    host = hosts[0].strip()
    found = _HOST.fullmatch(host)
    if found is None or (found.group(1) is not None and int(found.group(1)) > 65535):
        raise BadRequest(f"the Host header {host[:100]!r} is not a host name with an "
                         "optional port")
    return host


def hash_key(handshake: Handshake, request: RawRequestMessage, remote: str) -> str | None:
    """What ConsistentHash hashes on; None (round robin) when the handshake lacks it."""
    policy = handshake.route.backend.load_balancing
    if policy.algorithm != "ConsistentHash":
        return None
    if policy.hash_on == "Consumer":
        return handshake.consumer_key
    if policy.hash_on == "ClientIP":
        return remote or None
    return request.headers.get(policy.hash_header or "")
