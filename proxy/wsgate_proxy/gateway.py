"""The handshake: route, authenticate, dial upstream, answer 101, hand over to the relay.

Every refusal is an HTTP answer before any upgrade (the client sees a status, not
a socket that opens and dies), with a plain-text body that says what to change.
The one exception is FirstMessage mode, where the credential only comes after the
upgrade: there a refusal is a close frame (4401/4403) with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time

from aiohttp import web
from multidict import CIMultiDict

from . import metrics
from .auth import Authenticated, AuthFailure
from .config import Endpoint, Route
from .credentials import from_auth_message, offered_subprotocols, strip_cookie, strip_query
from .first_message import (
    AUTH_FAILED,
    AUTH_FORBIDDEN,
    AUTH_OK,
    AuthMessageError,
    FirstMessageReader,
)
from .limits import Admission, LimitReached
from .relay import BAD_GATEWAY, TRY_AGAIN_LATER, Session, close_frame
from .routing import BadPath, Match, normalize_path, quote_path
from .runtime import Runtime
from .upstream import (
    UpstreamError,
    UpstreamProtocol,
    UpstreamResponse,
    accept_for,
    build_request,
    open_upstream,
)

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

Connected = tuple[asyncio.Transport, UpstreamProtocol, UpstreamResponse, Endpoint]


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
        if route.auth.mode == "FirstMessage":
            return await self._first_message(request, match, path, raw_query, protocols)
        try:
            authed = await active.authenticator.authenticate(
                route, request.headers, raw_query, protocols)
        except AuthFailure as exc:
            outcome = "unauthorized" if exc.status == 401 else "forbidden"
            headers = CIMultiDict(("WWW-Authenticate", c) for c in exc.challenges)
            return self._refused(route, exc.status, outcome, exc.message, headers)

        candidates = active.balancers[route.key].candidates(_hash_key(route, request, authed))
        if not candidates:
            return self._no_endpoints(route)
        consumer = authed.identity.consumer if authed.identity else None
        try:
            admission = await self.runtime.limits.admit(route, consumer)
        except LimitReached as exc:
            return self._refused(route, exc.status, exc.outcome, exc.message)
        started = False
        try:
            response, started = await self._proxy(
                request, match, path, authed, candidates, protocols, raw_query, admission
            )
            return response
        finally:
            if not started:  # a session releases its admission when it ends
                self.runtime.limits.release(admission)

    async def _proxy(
        self,
        request: web.BaseRequest,
        match: Match,
        path: str,
        authed: Authenticated,
        candidates: list[Endpoint],
        protocols: list[str],
        raw_query: str,
        admission: Admission,
    ) -> tuple[web.StreamResponse, bool]:
        """The answer to the client, and whether a session started."""
        route = match.route
        key = request.headers["Sec-WebSocket-Key"]
        forwarded = [p for p in protocols if not _is_credential_entry(p, authed)]
        upstream_request = build_request(
            _upstream_target(match, authed, raw_query),
            _upstream_headers(request, route, authed, forwarded),
        )
        connected, errors = await self._dial(route, candidates, upstream_request, key)
        if connected is None:
            return self._refused(
                route, 502, "upstream_error",
                "no upstream accepted the handshake: " + "; ".join(errors),
            ), False
        transport, protocol, response, endpoint = connected

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

        response_101 = await _upgrade(request, headers, transport)
        if response_101 is None:
            return web.Response(status=499), False
        session = self._start_session(request, route, path, authed, endpoint, transport,
                                      protocol, admission)
        request.protocol.set_parser(session)  # type: ignore[arg-type]
        session.start()
        await self._until_done(session)
        return response_101, True

    async def _first_message(
        self,
        request: web.BaseRequest,
        match: Match,
        path: str,
        raw_query: str,
        protocols: list[str],
    ) -> web.StreamResponse:
        """Upgrade first, authenticate with the first message, then dial and relay."""
        route = match.route
        # The proxy answers the handshake itself: without extensions (the upstream is
        # not there yet to agree on them) and with the client's first subprotocol.
        chosen = protocols[0] if protocols else None
        headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Accept": accept_for(request.headers["Sec-WebSocket-Key"])}
        if chosen:
            headers["Sec-WebSocket-Protocol"] = chosen
        response_101 = await _upgrade(request, headers, None)
        if response_101 is None:
            return web.Response(status=499)
        client = request.transport
        assert client is not None
        reader = FirstMessageReader()
        request.protocol.set_parser(reader)  # type: ignore[arg-type]

        def refuse(code: int, reason: str, outcome: str) -> web.StreamResponse:
            metrics.HANDSHAKES.labels(route.key, outcome).inc()
            log.info("first message refused", extra={"route": route.key, "code": code,
                                                     "outcome": outcome, "reason": reason})
            if not client.is_closing():
                client.write(close_frame(code, reason, masked=False))
                client.close()
            return response_101

        try:
            async with asyncio.timeout(route.auth.first_message_timeout_seconds):
                message = await reader.message()
        except TimeoutError:
            return refuse(AUTH_FAILED, "authentication timeout", "unauthorized")
        except AuthMessageError as exc:
            return refuse(AUTH_FAILED, str(exc), "unauthorized")
        presented = from_auth_message(route.auth, message)
        if presented is None:
            return refuse(AUTH_FAILED, "the auth message carries no credential this route "
                                       "accepts", "unauthorized")
        active = self.runtime.active
        assert active is not None
        try:
            authed = await active.authenticator.check(route, presented)
        except AuthFailure as exc:
            if exc.status == 401:
                return refuse(AUTH_FAILED, exc.message, "unauthorized")
            return refuse(AUTH_FORBIDDEN, exc.message, "forbidden")

        consumer = authed.identity.consumer if authed.identity else None
        candidates = active.balancers[route.key].candidates(_hash_key(route, request, authed))
        try:
            admission = await self.runtime.limits.admit(route, consumer)
        except LimitReached as exc:
            return refuse(TRY_AGAIN_LATER, exc.message, exc.outcome)
        key = base64.b64encode(os.urandom(16)).decode()
        upstream_headers = [
            (name, value) for name, value in _upstream_headers(
                request, route, authed, [chosen] if chosen else [])
            if name.lower() not in ("sec-websocket-key", "sec-websocket-extensions")
        ] + [("Sec-WebSocket-Key", key)]
        upstream_request = build_request(_upstream_target(match, authed, raw_query),
                                         upstream_headers)
        connected, errors = await self._dial(route, candidates, upstream_request, key)
        if connected is None:
            self.runtime.limits.release(admission)
            outcome = "no_upstream" if not candidates else "upstream_error"
            log.info("no upstream", extra={"route": route.key, "errors": errors})
            return refuse(BAD_GATEWAY, "no upstream accepted the session", outcome)
        transport, protocol, _response, endpoint = connected
        client.write(AUTH_OK)
        session = self._start_session(request, route, path, authed, endpoint, transport,
                                      protocol, admission)
        reader.attach(session)
        session.start()
        await self._until_done(session)
        return response_101

    async def _dial(
        self, route: Route, candidates: list[Endpoint], upstream_request: bytes, key: str
    ) -> tuple[Connected | None, list[str]]:
        """Try the endpoints in order, up to 1 + retries of them."""
        errors: list[str] = []
        started = time.perf_counter()
        active = self.runtime.active
        tls = active.upstream_tls.get(route.key) if active is not None else None
        for endpoint in candidates[: route.backend.retries + 1]:
            try:
                transport, protocol, response = await open_upstream(
                    endpoint, upstream_request, key, route.backend.connect_timeout_seconds, tls
                )
            except UpstreamError as exc:
                errors.append(str(exc))
                if not exc.retryable:  # the upstream itself refused: retrying elsewhere won't help
                    break
                self.runtime.health.failed(endpoint)
                continue
            self.runtime.health.succeeded(endpoint)
            metrics.UPSTREAM_CONNECT.labels(route.key).observe(time.perf_counter() - started)
            return (transport, protocol, response, endpoint), errors
        return None, errors

    def _start_session(
        self,
        request: web.BaseRequest,
        route: Route,
        path: str,
        authed: Authenticated,
        endpoint: Endpoint,
        transport: asyncio.Transport,
        protocol: UpstreamProtocol,
        admission: Admission,
    ) -> Session:
        client = request.transport
        assert client is not None
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
        self.runtime.session_started(session, route, admission)
        metrics.HANDSHAKES.labels(route.key, "ok").inc()
        return session

    @staticmethod
    async def _until_done(session: Session) -> None:
        try:
            await asyncio.shield(session.done)
        except asyncio.CancelledError:
            session.abort()
            raise

    def _no_endpoints(self, route: Route) -> web.Response:
        return self._refused(
            route, 503, "no_upstream",
            f"backend Service {route.namespace}/{route.backend.service} has no ready endpoints",
        )

    def _refused(
        self,
        route: Route | None,
        status: int,
        outcome: str,
        message: str,
        headers: dict[str, str] | CIMultiDict[str] | None = None,
    ) -> web.Response:
        metrics.HANDSHAKES.labels(route.key if route else "", outcome).inc()
        log.info(
            "handshake refused",
            extra={"route": route.key if route else None, "status": status, "outcome": outcome,
                   "reason": message},
        )
        return _refuse(status, message, headers)


async def _upgrade(
    request: web.BaseRequest, headers: dict[str, str], upstream: asyncio.Transport | None
) -> web.StreamResponse | None:
    """Send the 101; None when the client is already gone (the upstream is then cut)."""
    response = web.StreamResponse(status=101, headers=headers)
    response.force_close()
    try:
        await response.prepare(request)
    except (ConnectionError, RuntimeError):
        if upstream is not None:
            upstream.abort()
        return None
    client = request.transport
    if client is None or client.is_closing():
        if upstream is not None:
            upstream.abort()
        return None
    return response


def _refuse(
    status: int, message: str, headers: dict[str, str] | CIMultiDict[str] | None = None
) -> web.Response:
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


def _hidden(route: Route, authed: Authenticated, source: str) -> str | None:
    """The name of the credential to strip from ``source`` before forwarding, if any."""
    presented = authed.presented
    if presented is None or presented.source != source or not route.auth.hide_credentials:
        return None
    return presented.name


def _upstream_target(match: Match, authed: Authenticated, raw_query: str) -> str:
    if (name := _hidden(match.route, authed, "query")) is not None:
        raw_query = strip_query(raw_query, name)
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
    dropped_header = (_hidden(route, authed, "header") or "").lower()
    dropped_cookie = _hidden(route, authed, "cookie")
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1")
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower in connection_tokens or lower == dropped_header:
            continue
        value = raw_value.decode("latin-1")
        if lower == "cookie" and dropped_cookie is not None:
            value = strip_cookie(value, dropped_cookie)
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


def auth_message(**credential: str) -> str:
    """The FirstMessage-mode auth message for a credential (for clients and tests)."""
    return json.dumps({"type": "auth", **credential})
