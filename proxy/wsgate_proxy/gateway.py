"""The handshake: route, authenticate, dial upstream, answer 101, hand over to the relay.

Every refusal is a ``Refusal`` (refusals.py), answered in one place: before any
upgrade as an HTTP status with a plain-text body that says what to change; in
FirstMessage mode, where the credential only comes after the upgrade, as a close
frame (4401/4403, 1013, 1014) with a short reason. An External auth server's own
401/403 reaches the client as the auth server gave it.

In FirstMessage mode a client may send another auth message at any time during the
session, of the same shape as the first, to extend the session with a new credential
(a fresh JWT before the old one expires); it is answered ``{"type": "auth", "ok":
true, "expiresAt": ...}`` or ``{"type": "auth", "ok": false, "error": ...}``, and never
reaches the upstream. One is checked at a time: another sent before the answer (a
flood, each of which would cost a check and an answer) closes the session with 1008.

What a handshake takes it gives back on every way out: its place under the route's
limits is held by ``Runtime.admission`` around everything from the dial to the end of
the session, and an upstream connection is aborted unless a session owns it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from . import metrics
from .config import Endpoint
from .credentials import from_auth_message
from .external_auth import Inbound
from .first_message import AuthMessageError, FirstMessageReader, auth_answer
from .forwarding import (
    forwarded_subprotocols,
    is_credential_entry,
    upstream_headers,
    upstream_target,
)
from .frames import CloseCode, close_frame
from .handshake import Handshake, check_upgrade, hash_key, read_handshake
from .refusals import BadGateway, Refusal, Unauthorized, Unavailable
from .relay import Session
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

Connected = tuple[asyncio.Transport, UpstreamProtocol, UpstreamResponse, Endpoint]


class Gateway:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # FirstMessage sessions whose mid-session auth message is being checked.
        self._reauthenticating: dict[Session, asyncio.Task[None]] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            handshake = read_handshake(request, self.runtime.active)
        except Refusal as refusal:
            return self._refused(None, refusal)
        try:
            check_upgrade(request, handshake.route)
            if handshake.route.auth.mode == "FirstMessage":
                return await self._first_message(request, handshake)
            return await self._authenticated(request, handshake)
        except Refusal as refusal:
            return self._refused(handshake.route.key, refusal)

    async def _authenticated(self, request: web.BaseRequest,
                             handshake: Handshake) -> web.StreamResponse:
        """Handshake mode: the credential is in the request; refusals are HTTP answers."""
        route = handshake.route
        inbound = Inbound(handshake.host, request.raw_path, request.remote or "",
                          request.secure, request.headers.get("X-Forwarded-For"))
        who = await handshake.active.authenticator.authenticate(
            route, request.headers, handshake.raw_query, list(handshake.protocols), inbound)
        handshake = handshake.authenticated(who)
        candidates = self._candidates(handshake, request)
        key = request.headers["Sec-WebSocket-Key"]
        protocols = forwarded_subprotocols(handshake)
        extensions = request.headers.getall("Sec-WebSocket-Extensions", [])
        upstream_request = build_request(upstream_target(handshake),
                                         upstream_headers(request, handshake, protocols))
        async with self.runtime.admission(route, handshake.who.identity):
            connected = await self._dial(handshake, candidates, upstream_request, key,
                                         (protocols, extensions))
            transport, _protocol, response, _endpoint = connected
            try:
                response_101 = await _upgrade(request, _answer_headers(response, handshake))
                if response_101 is None:
                    transport.abort()
                    return web.Response(status=499)
                session = self._start_session(request, handshake, connected)
                request.protocol.set_parser(session)  # type: ignore[arg-type]
            except BaseException:
                transport.abort()
                raise
            await _until_done(session)
        return response_101

    async def _first_message(self, request: web.BaseRequest,
                             handshake: Handshake) -> web.StreamResponse:
        """Upgrade first, authenticate with the first message, then dial and relay."""
        route = handshake.route
        # The proxy answers the handshake itself: without extensions (the upstream is
        # not there yet to agree on them) and with the client's first subprotocol.
        chosen = handshake.protocols[0] if handshake.protocols else None
        headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Accept": accept_for(request.headers["Sec-WebSocket-Key"])}
        if chosen:
            headers["Sec-WebSocket-Protocol"] = chosen
        response_101 = await _upgrade(request, headers)
        if response_101 is None:
            return web.Response(status=499)
        client = request.transport
        assert client is not None
        reader = FirstMessageReader(client)
        request.protocol.set_parser(reader)  # type: ignore[arg-type]
        try:
            await self._first_message_session(request, handshake, reader, chosen)
        except Refusal as refusal:
            self._count(route.key, refusal)
            if not client.is_closing():
                client.write(close_frame(refusal.close_code, refusal.reason, masked=False))
                client.close()
        return response_101

    async def _first_message_session(self, request: web.BaseRequest, handshake: Handshake,
                                     reader: FirstMessageReader, chosen: str | None) -> None:
        route = handshake.route
        try:
            async with asyncio.timeout(route.auth.first_message_timeout_seconds):
                message = await reader.message()
        except TimeoutError:
            raise Unauthorized("authentication timeout") from None
        except AuthMessageError as exc:
            raise Unauthorized(str(exc)) from None
        presented = from_auth_message(route.auth, message)
        if presented is None:
            raise Unauthorized("the auth message carries no credential this route accepts")
        who = await handshake.active.authenticator.check(route, presented)
        handshake = handshake.authenticated(who)
        candidates = self._candidates(handshake, request)
        key = base64.b64encode(os.urandom(16)).decode()
        protocols = [chosen] if chosen else []
        upstream_request = build_request(upstream_target(handshake), [
            (name, value) for name, value in upstream_headers(request, handshake, protocols)
            if name.lower() not in ("sec-websocket-key", "sec-websocket-extensions")
        ] + [("Sec-WebSocket-Key", key)])
        async with self.runtime.admission(route, handshake.who.identity):
            if reader.client_gone:
                return
            connected = await self._dial(handshake, candidates, upstream_request, key,
                                         (protocols, []))
            transport = connected[0]
            client = request.transport
            try:
                if reader.client_gone or client is None or client.is_closing():
                    transport.abort()  # left during the dial: nothing to relay
                    return
                client.write(auth_answer(True, valid_until=who.valid_until))
                session = self._start_session(request, handshake, connected,
                                              on_auth_message=self._reauthenticate)
                reader.attach(session)
            except BaseException:
                transport.abort()
                raise
            await _until_done(session)

    def _candidates(self, handshake: Handshake, request: web.BaseRequest) -> list[Endpoint]:
        route = handshake.route
        candidates = handshake.active.balancers[route.key].candidates(
            hash_key(handshake, request))
        if not candidates:
            raise Unavailable(f"backend Service {route.namespace}/{route.backend.service} has "
                              "no ready endpoints", reason="no ready endpoints")
        return candidates

    async def _dial(
        self,
        handshake: Handshake,
        candidates: list[Endpoint],
        upstream_request: bytes,
        key: str,
        offered: tuple[list[str], list[str]],
    ) -> Connected:
        """Try the endpoints in order, up to 1 + retries of them; BadGateway when none
        completes the handshake (the details go to the log, not to the client)."""
        route = handshake.route
        errors: list[UpstreamError] = []
        started = time.perf_counter()
        tls = handshake.active.upstream_tls.get(route.key)
        for endpoint in candidates[: route.backend.retries + 1]:
            try:
                transport, protocol, response = await open_upstream(
                    endpoint, upstream_request, key, route.backend.connect_timeout_seconds, tls,
                    offered)
            except UpstreamError as exc:
                errors.append(exc)
                if not exc.retryable:  # the upstream itself refused: retrying elsewhere won't help
                    break
                self.runtime.health.failed(endpoint)
                continue
            self.runtime.health.succeeded(endpoint)
            metrics.child(metrics.UPSTREAM_CONNECT, route.key).observe(
                time.perf_counter() - started)
            return transport, protocol, response, endpoint
        log.warning("no upstream accepted the handshake",
                    extra={"route": route.key, "errors": [str(e) for e in errors]})
        raise BadGateway("no upstream accepted the handshake: "
                         + "; ".join(_distinct(e.message for e in errors)))

    def _start_session(self, request: web.BaseRequest, handshake: Handshake,
                       connected: Connected,
                       on_auth_message: Callable[[Session, dict[str, Any]], None] | None = None,
                       ) -> Session:
        transport, protocol, _response, endpoint = connected
        client = request.transport
        assert client is not None
        session = Session(
            handshake, endpoint,
            client_transport=client,
            client_protocol=request.protocol,
            client_writer=request.writer,
            upstream_transport=transport,
            upstream_protocol=protocol,
            on_end=self.runtime.session_ended,
            on_auth_message=on_auth_message,
        )
        self.runtime.session_started(session)
        metrics.handshake(handshake.route.key, "ok")
        session.start()
        return session

    def _reauthenticate(self, session: Session, message: dict[str, Any]) -> None:
        """A FirstMessage session's client sent another auth message: check it off the
        relay's path and answer in-band. One at a time: a client that sends the next
        before the answer to the last is flooding, and its session ends."""
        if session.closing:
            return
        if session in self._reauthenticating:
            session.close(CloseCode.POLICY_VIOLATION,
                          "auth message sent before the previous one was answered")
            return
        self._reauthenticating[session] = asyncio.ensure_future(
            self._check_reauth(session, message))

    async def _check_reauth(self, session: Session, message: dict[str, Any]) -> None:
        try:
            answer = await self._reauth_answer(session, message)
        finally:
            del self._reauthenticating[session]
        if answer is not None:
            session.send_to_client(answer)

    async def _reauth_answer(self, session: Session, message: dict[str, Any]
                             ) -> bytes | None:
        active = self.runtime.active
        route = self.runtime.live_route(session)
        if active is None or route is None:
            return None  # the route is gone: the config review closes the session
        presented = from_auth_message(route.auth, message)
        if presented is None:
            return auth_answer(False, error="the auth message carries no credential this "
                                            "route accepts")
        try:
            who = await active.authenticator.check(route, presented)
        except Refusal as refusal:
            return auth_answer(False, error=refusal.reason)
        identity = who.identity
        if identity is None or identity.key != session.consumer_key:
            return auth_answer(False, error="the credential is not the session's: open a new "
                                            "session for another identity")
        if session.closing or session.done.done():  # it ended (or is ending) meanwhile
            return None
        session.credential_fingerprint = identity.fingerprint
        self.runtime.lifetimes.renew(session, who.valid_until)
        return auth_answer(True, valid_until=who.valid_until)

    def _count(self, route_key: str | None, refusal: Refusal) -> None:
        metrics.handshake(route_key or "", refusal.outcome)
        log.info("handshake refused",
                 extra={"route": route_key, "status": refusal.status,
                        "outcome": refusal.outcome, "reason": refusal.message})

    def _refused(self, route_key: str | None, refusal: Refusal) -> web.Response:
        self._count(route_key, refusal)
        if refusal.body is not None:  # an auth server's own answer, passed on
            return web.Response(status=refusal.status, body=refusal.body,
                                headers=list(refusal.headers) or None)
        return web.Response(status=refusal.status, text=refusal.message + "\n",
                            headers=list(refusal.headers) or None)


def _answer_headers(response: UpstreamResponse, handshake: Handshake) -> dict[str, str]:
    """The client's 101: the upstream's answer (already checked against the offers)."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": response.headers["Sec-WebSocket-Accept"],
    }
    chosen = response.headers.get("Sec-WebSocket-Protocol")
    if chosen is None:
        # A browser that offered subprotocols fails a handshake that selects none; a
        # credential entry is the one offer certain to be acceptable.
        chosen = next((p for p in handshake.protocols if is_credential_entry(p)), None)
    if chosen:
        headers["Sec-WebSocket-Protocol"] = chosen
    if extensions := response.headers.get("Sec-WebSocket-Extensions"):
        headers["Sec-WebSocket-Extensions"] = extensions
    return headers


async def _upgrade(request: web.BaseRequest, headers: dict[str, str]
                   ) -> web.StreamResponse | None:
    """Send the 101; None when the client is already gone."""
    response = web.StreamResponse(status=101, headers=headers)
    response.force_close()
    try:
        await response.prepare(request)
    except (ConnectionError, RuntimeError):
        return None
    client = request.transport
    if client is None or client.is_closing():
        return None
    return response


async def _until_done(session: Session) -> None:
    try:
        await asyncio.shield(session.done)
    except asyncio.CancelledError:
        session.abort()
        raise


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def auth_message(**credential: str) -> str:
    """The FirstMessage-mode auth message for a credential (for clients and tests)."""
    return json.dumps({"type": "auth", **credential})
