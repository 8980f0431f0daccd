"""The handshake: route, authenticate, dial upstream, answer 101, hand over to the relay.

Every refusal is a ``Refusal`` (refusals.py), answered in one place: before any
upgrade as an HTTP status with a plain-text body that says what to change (returned
to the listener, which writes it); in
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
limits is held by ``Runtime.admission`` from the dial on and handed over to the session,
which gives it back when it ends; an upstream connection is aborted unless a session
owns it.

Once a session has started, the handler returns at once and its task ends; the
listener's connection object is let go (the session owns the connection): an idle
session holds no task, no coroutine frames, no parser and no request head, only its
transports and the session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp.http_parser import RawRequestMessage

from . import metrics
from .config import Endpoint
from .credentials import from_auth_message
from .external_auth import Inbound
from .first_message import AuthMessageError, FirstMessageReader, auth_answer
from .forwarding import (
    forwarded_subprotocols,
    is_credential_entry,
    upstream_request,
)
from .frames import CloseCode, close_frame
from .handshake import Handshake, check_upgrade, hash_key, read_handshake
from .refusals import BadGateway, Refusal, Unauthorized, Unavailable
from .relay import Session
from .runtime import Held, Runtime
from .upstream import (
    UpstreamError,
    UpstreamProtocol,
    UpstreamResponse,
    accept_for,
    open_upstream,
)

if TYPE_CHECKING:
    from .listener import ClientConnection

log = logging.getLogger("wsgate.gateway")

Connected = tuple[asyncio.Transport, UpstreamProtocol, UpstreamResponse, Endpoint]


class Gateway:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # FirstMessage sessions whose mid-session auth message is being checked.
        self._reauthenticating: dict[Session, asyncio.Task[None]] = {}

    async def handle(self, request: RawRequestMessage,
                     client: ClientConnection) -> Refusal | None:
        """Serve one request head (listener.py): None once the 101 is written (or the
        client left), else the refusal to answer with."""
        try:
            handshake = read_handshake(request, self.runtime.active)
        except Refusal as refusal:
            return self._refused(None, refusal)
        try:
            check_upgrade(request, handshake.route)
            if handshake.route.auth.mode == "FirstMessage":
                await self._first_message(request, client, handshake)
                return None
            await self._authenticated(request, client, handshake)
            return None
        except Refusal as refusal:
            return self._refused(handshake.route.key, refusal)

    async def _authenticated(self, request: RawRequestMessage, client: ClientConnection,
                             handshake: Handshake) -> None:
        """Handshake mode: the credential is in the request; refusals are HTTP answers."""
        route = handshake.route
        headers = request.headers
        inbound = Inbound(handshake.host, request.path, client.remote, client.secure,
                          headers.get("X-Forwarded-For"))
        who = await handshake.active.authenticator.authenticate(
            route, headers, handshake.raw_query, list(handshake.protocols), inbound)
        handshake = handshake.authenticated(who)
        candidates = self._candidates(handshake, request, client)
        key = headers["Sec-WebSocket-Key"]
        protocols = forwarded_subprotocols(handshake)
        extensions = headers.getall("Sec-WebSocket-Extensions", [])
        to_upstream = upstream_request(request, handshake, protocols, client.remote,
                                       client.secure)
        async with self.runtime.admission(route, handshake.who.identity) as held:
            connected = await self._dial(handshake, candidates, to_upstream, key,
                                         (protocols, extensions))
            transport = connected[0]
            try:
                if not client.upgrade(_answer_101(connected[2], handshake)):
                    transport.abort()  # the client left during the dial
                    return
                self._start_session(client, handshake, connected, held)
            except BaseException:
                transport.abort()
                raise

    async def _first_message(self, request: RawRequestMessage, client: ClientConnection,
                             handshake: Handshake) -> None:
        """Upgrade first, authenticate with the first message, then dial and relay."""
        route = handshake.route
        # The proxy answers the handshake itself: without extensions (the upstream is
        # not there yet to agree on them) and with the client's first subprotocol.
        chosen = handshake.protocols[0] if handshake.protocols else None
        answer = _head_101(accept_for(request.headers["Sec-WebSocket-Key"]), chosen, None)
        if not client.upgrade(answer):
            return
        transport = client.transport
        assert transport is not None
        reader = FirstMessageReader(transport)
        client.read_into(reader)
        try:
            await self._first_message_session(request, client, handshake, reader, chosen)
        except Refusal as refusal:
            self._count(route.key, refusal)
            if not transport.is_closing():
                transport.write(close_frame(refusal.close_code, refusal.reason, masked=False))
                transport.close()

    async def _first_message_session(self, request: RawRequestMessage,
                                     client: ClientConnection, handshake: Handshake,
                                     reader: FirstMessageReader, chosen: str | None) -> None:
        """Authenticate the auth message, dial, start the session (unless the client left
        meanwhile)."""
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
        candidates = self._candidates(handshake, request, client)
        key = base64.b64encode(os.urandom(16)).decode()
        protocols = [chosen] if chosen else []
        to_upstream = upstream_request(request, handshake, protocols, client.remote,
                                       client.secure, key)
        async with self.runtime.admission(route, handshake.who.identity) as held:
            if reader.client_gone:
                return
            connected = await self._dial(handshake, candidates, to_upstream, key,
                                         (protocols, []))
            transport = connected[0]
            try:
                if reader.client_gone or client.transport is None or \
                        client.transport.is_closing():
                    transport.abort()  # left during the dial: nothing to relay
                    return
                client.transport.write(auth_answer(True, valid_until=who.valid_until))
                self._start_session(client, handshake, connected, held, reader,
                                    on_auth_message=self._reauthenticate)
            except BaseException:
                transport.abort()
                raise

    def _candidates(self, handshake: Handshake, request: RawRequestMessage,
                    client: ClientConnection) -> list[Endpoint]:
        route = handshake.route
        candidates = handshake.active.balancers[route.key].candidates(
            hash_key(handshake, request, client.remote))
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

    def _start_session(self, client: ClientConnection, handshake: Handshake,
                       connected: Connected, held: Held,
                       reader: FirstMessageReader | None = None,
                       on_auth_message: Callable[[Session, dict[str, Any]], None] | None = None,
                       ) -> Session:
        transport, protocol, _response, endpoint = connected
        assert client.transport is not None
        session = Session(
            handshake, endpoint,
            client_transport=client.transport,
            upstream_transport=transport,
            upstream_protocol=protocol,
            on_end=self.runtime.session_ended,
            on_auth_message=on_auth_message,
        )
        self.runtime.session_started(session)
        held.hand_over(session)
        metrics.handshake(handshake.route.key, "ok")
        # The session owns both connections before anything is written on either; then
        # what the listener (or the auth message's reader) read past the handshake, then
        # what the upstream sent with its 101.
        session.take_over()
        client.hand_over(session)
        if reader is not None:
            reader.attach(session)
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

    def _refused(self, route_key: str | None, refusal: Refusal) -> Refusal:
        self._count(route_key, refusal)
        return refusal


def _answer_101(response: UpstreamResponse, handshake: Handshake) -> bytes:
    """The client's 101: the upstream's answer (already checked against the offers)."""
    headers = response.headers
    chosen = headers.get("Sec-WebSocket-Protocol")
    if chosen is None:
        # A browser that offered subprotocols fails a handshake that selects none; a
        # credential entry is the one offer certain to be acceptable.
        chosen = next((p for p in handshake.protocols if is_credential_entry(p)), None)
    return _head_101(headers["Sec-WebSocket-Accept"], chosen,
                     headers.get("Sec-WebSocket-Extensions"))


_HEAD_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Accept: ")


def _head_101(accept: str, protocol: str | None, extensions: str | None) -> bytes:
    head = _HEAD_101 + accept.encode("latin-1")
    if protocol:
        head += b"\r\nSec-WebSocket-Protocol: " + protocol.encode("latin-1")
    if extensions:
        head += b"\r\nSec-WebSocket-Extensions: " + extensions.encode("latin-1")
    return head + b"\r\n\r\n"


def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def auth_message(**credential: str) -> str:
    """The FirstMessage-mode auth message for a credential (for clients and tests)."""
    return json.dumps({"type": "auth", **credential})
