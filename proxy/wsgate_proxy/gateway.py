"""The handshake: route, authenticate, dial upstream, answer 101, hand over to the relay.

Every refusal is an HTTP answer before any upgrade (the client sees a status, not
a socket that opens and dies), with a plain-text body that says what to change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time

from aiohttp import web

from . import metrics
from .auth import Authenticated, AuthFailure
from .config import Endpoint, Route
from .credentials import offered_subprotocols, strip_cookie, strip_query
from .relay import Session
from .routing import BadPath, Match, normalize_path, quote_path
from .runtime import LimitReached, Runtime
from .upstream import UpstreamError, build_request, open_upstream

log = logging.getLogger("wsgate.gateway")

# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the proxy sets itself.
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
        "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Sec-WebSocket-Protocol", "X-Consumer-Username", "X-Forwarded-Proto",
        "X-Forwarded-Host", "X-Forwarded-For",
    )
)


class Gateway:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        active = self.runtime.active
        if active is None:
            return _refuse(503, "the proxy has no configuration yet")
        raw_path, _, raw_query = request.raw_path.partition("?")
        try:
            path = normalize_path(raw_path)
        except (BadPath, UnicodeDecodeError) as exc:
            return _refuse(400, f"bad request path: {exc}")
        host = request.headers.get("Host", "")
        match = active.router.match(host, path)
        if match is None:
            return self._refused(None, 404, "no_route", f"no route for host {host!r} path {path!r}")
        route = match.route

        if not _is_websocket_upgrade(request):
            return self._refused(
                route, 426, "upgrade_required",
                "this path serves WebSocket only: send a GET with 'Upgrade: websocket' "
                "and 'Connection: Upgrade'",
                {"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        problem = _handshake_problem(request)
        if problem is not None:
            status, message, headers = problem
            return self._refused(route, status, "bad_request", message, headers)

        if route.allowed_origins:
            origin = request.headers.get("Origin", "").lower()
            if origin not in route.allowed_origins:
                return self._refused(
                    route, 403, "forbidden",
                    f"origin {origin or '(none)'!r} is not allowed on this route",
                )

        protocols = offered_subprotocols(request.headers)
        try:
            authed = active.authenticator.authenticate(route, request.headers, raw_query, protocols)
        except AuthFailure as exc:
            outcome = "unauthorized" if exc.status == 401 else "forbidden"
            headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
            return self._refused(route, exc.status, outcome, exc.message, headers)

        candidates = active.balancers[route.key].candidates(_hash_key(route, request, authed))
        if not candidates:
            return self._refused(
                route, 503, "no_upstream",
                f"backend Service {route.namespace}/{route.backend.service} has no ready endpoints",
            )
        consumer_key = authed.identity.consumer.key if authed.identity else None
        try:
            self.runtime.admit(route, consumer_key)
        except LimitReached as exc:
            return self._refused(route, exc.status, "rate_limited", exc.message)
        started = False
        try:
            response, started = await self._proxy(
                request, match, path, authed, candidates, protocols, raw_query
            )
            return response
        finally:
            if not started:  # a session releases its admission when it ends
                self.runtime.release(route.key, consumer_key)

    async def _proxy(
        self,
        request: web.BaseRequest,
        match: Match,
        path: str,
        authed: Authenticated,
        candidates: list[Endpoint],
        protocols: list[str],
        raw_query: str,
    ) -> tuple[web.StreamResponse, bool]:
        """The answer to the client, and whether a session started."""
        route = match.route
        key = request.headers["Sec-WebSocket-Key"]
        forwarded_protocols = [p for p in protocols if not _is_credential_entry(p, authed)]
        upstream_request = build_request(
            _upstream_target(match, authed, raw_query),
            _upstream_headers(request, route, authed, forwarded_protocols),
        )
        errors: list[str] = []
        started = time.perf_counter()
        connected = None
        for endpoint in candidates[: route.backend.retries + 1]:
            try:
                connected = await open_upstream(
                    endpoint, upstream_request, key, route.backend.connect_timeout_seconds
                )
                break
            except UpstreamError as exc:
                errors.append(str(exc))
                if not exc.retryable:  # the upstream itself refused: retrying elsewhere won't help
                    break
                self.runtime.health.failed(endpoint)
        if connected is None:
            return self._refused(
                route, 502, "upstream_error",
                "no upstream accepted the handshake: " + "; ".join(errors),
            ), False
        transport, protocol, response = connected
        self.runtime.health.succeeded(endpoint)
        metrics.UPSTREAM_CONNECT.labels(route.key).observe(time.perf_counter() - started)

        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Accept": response.headers["Sec-WebSocket-Accept"],
        }
        chosen = response.headers.get("Sec-WebSocket-Protocol")
        if chosen is None and authed.presented and authed.presented.subprotocol_entry:
            # A browser that offered subprotocols fails a handshake that selects none;
            # the credential entry is the one offer certain to be acceptable.
            chosen = authed.presented.subprotocol_entry
        if chosen:
            headers["Sec-WebSocket-Protocol"] = chosen
        if extensions := response.headers.get("Sec-WebSocket-Extensions"):
            headers["Sec-WebSocket-Extensions"] = extensions

        response_101 = web.StreamResponse(status=101, headers=headers)
        response_101.force_close()
        try:
            await response_101.prepare(request)
        except (ConnectionError, RuntimeError):
            transport.abort()
            raise
        client = request.transport
        if client is None or client.is_closing():
            transport.abort()
            return response_101, False

        limits = route.limits
        session = Session(
            route_key=route.key,
            endpoint=endpoint,
            client_transport=client,
            client_protocol=request.protocol,
            client_writer=request.writer,
            upstream_transport=transport,
            upstream_protocol=protocol,
            on_end=self.runtime.session_ended,
            max_message_bytes=limits.max_message_bytes or 0,
            messages_per_second=limits.messages_per_second or 0,
        )
        session.host, session.path = request.headers.get("Host", ""), path
        if (identity := authed.identity) is not None:
            session.consumer_key = identity.consumer.key
            session.username = identity.consumer.username
            session.credential_fingerprint = identity.fingerprint
        self.runtime.session_started(session, route)
        metrics.HANDSHAKES.labels(route.key, "ok").inc()
        request.protocol.set_parser(session)  # type: ignore[arg-type]
        session.start()
        try:
            await asyncio.shield(session.done)
        except asyncio.CancelledError:
            session.abort()
            raise
        return response_101, True

    def _refused(
        self,
        route: Route | None,
        status: int,
        outcome: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        metrics.HANDSHAKES.labels(route.key if route else "", outcome).inc()
        log.info(
            "handshake refused",
            extra={"route": route.key if route else None, "status": status, "outcome": outcome,
                   "reason": message},
        )
        return _refuse(status, message, headers)


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers)


def _hash_key(route: Route, request: web.BaseRequest, authed: Authenticated) -> str | None:
    """What ConsistentHash hashes on; None (round robin) when the handshake lacks it."""
    policy = route.backend.load_balancing
    if policy.algorithm != "ConsistentHash":
        return None
    if policy.hash_on == "Consumer":
        return authed.identity.consumer.key if authed.identity else None
    if policy.hash_on == "ClientIP":
        return request.remote
    return request.headers.get(policy.hash_header or "")


def _is_websocket_upgrade(request: web.BaseRequest) -> bool:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = request.headers.get("Connection", "").lower().split(",")
    return "upgrade" in (t.strip() for t in tokens)


def _handshake_problem(
    request: web.BaseRequest,
) -> tuple[int, str, dict[str, str] | None] | None:
    if request.method != "GET":
        return 400, f"a WebSocket handshake is a GET, not {request.method}", None
    if request.headers.get("Sec-WebSocket-Version") != "13":
        return 426, "only WebSocket version 13 is supported", {"Sec-WebSocket-Version": "13"}
    key = request.headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return 400, "Sec-WebSocket-Key must be 16 random bytes in base64", None
    return None


def _is_credential_entry(protocol: str, authed: Authenticated) -> bool:
    return bool(authed.presented and protocol == authed.presented.subprotocol_entry)


def _upstream_target(match: Match, authed: Authenticated, raw_query: str) -> str:
    presented = authed.presented
    sources = match.route.auth.key_auth
    if presented and presented.source == "query" and match.route.auth.hide_credentials:
        raw_query = strip_query(raw_query, sources.query)
    target = quote_path(match.upstream_path)
    return f"{target}?{raw_query}" if raw_query else target


def _upstream_headers(
    request: web.BaseRequest,
    route: Route,
    authed: Authenticated,
    protocols: list[str],
) -> list[tuple[str, str]]:
    connection_tokens = {
        t.strip().lower() for t in request.headers.get("Connection", "").split(",") if t.strip()
    }
    hide = authed.presented is not None and route.auth.hide_credentials
    sources = route.auth.key_auth
    dropped = {
        sources.header.lower()
        if hide and authed.presented and authed.presented.source == "header"
        else ""
    }
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower in connection_tokens or lower in dropped:
            continue
        value = raw_value.decode("latin-1")
        if lower == "cookie" and hide and authed.presented and authed.presented.source == "cookie":
            value = strip_cookie(value, sources.cookie)
            if not value:
                continue
        headers.append((name, value))
    headers += [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if protocols:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(protocols)))
    if authed.identity is not None:
        headers.append(("X-Consumer-Username", authed.identity.consumer.username))
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    headers.append(("X-Forwarded-Proto", "https" if request.secure else "http"))
    headers.append(("X-Forwarded-Host", request.headers.get("Host", "")))
    return headers
