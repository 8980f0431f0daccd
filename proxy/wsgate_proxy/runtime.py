"""The live runtime: the active config in the form the data path reads it, and the
registry of live sessions.

A new config is compiled into an ActiveConfig off to the side and swapped in with
one assignment; a handshake takes one snapshot of it and is served from that
snapshot alone (handshake.py). Sessions hold what they need of their route; a swap
leaves them running, and a session that starts under an older snapshot than the
live one is held against the live one at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

from . import metrics
from .auth import Authenticator, allows
from .balancing import Balancer, EndpointHealth, balancer_for
from .config import Endpoint, GatewayConfig, Route
from .expiry import Lifetimes
from .external_auth import ExternalAuthClient
from .frames import CloseCode
from .jwks import KeySets
from .leases import LeaseStore
from .limits import Admission, ConnectionLimits, Holder
from .oidc import provider_for
from .outbound import Outbound
from .passwords import MAX_PENDING, PasswordVerifier
from .relay import Session
from .routing import Router
from .tls import CertificateStore, upstream_context

access_log = logging.getLogger("wsgate.access")
log = logging.getLogger("wsgate.runtime")


class ActiveConfig:
    def __init__(
        self,
        config: GatewayConfig,
        previous: ActiveConfig | None,
        endpoint_sessions: Counter[Endpoint],
        health: EndpointHealth,
        passwords: PasswordVerifier,
        keysets: KeySets | None = None,
        external: ExternalAuthClient | None = None,
    ) -> None:
        self.config = config
        self.router = Router(config.routes)
        self.routes = {route.key: route for route in config.routes}
        self.authenticator = Authenticator(config.consumers, passwords, keysets, external)
        # Client contexts for wss:// backends, with the name to verify.
        self.upstream_tls: dict[str, tuple[ssl.SSLContext, str]] = {
            route.key: (upstream_context(route.backend.tls.ca_pem),
                        route.backend.tls.server_name)
            for route in config.routes if route.backend.tls is not None
        }
        old = previous.balancers if previous is not None else {}
        self.balancers: dict[str, Balancer] = {
            route.key: balancer_for(route, old.get(route.key), endpoint_sessions, health)
            for route in config.routes
        }
        self.applied_at = time.time()


# How many sessions a periodic counter flush handles before it lets the loop run.
FLUSH_BATCH = 1000


class Runtime:
    def __init__(self, password_queue: int = MAX_PENDING,
                 shared: LeaseStore | None = None) -> None:
        self.active: ActiveConfig | None = None
        # Connection limits, counted here or (--limits-redis-url) across the proxies.
        self.limits = ConnectionLimits(shared)
        self.sessions: set[Session] = set()
        self.draining = False  # stopping: not ready, not accepting, letting sessions end
        # Kept across configs: what the balancers read.
        self.endpoint_sessions: Counter[Endpoint] = Counter()
        self.health = EndpointHealth()
        self.passwords = PasswordVerifier(max_pending=password_queue)
        # What authentication asks outside the proxy: auth servers, identity providers.
        self.outbound = Outbound()
        self.external = ExternalAuthClient(self.outbound)
        self.keysets = KeySets(self.outbound)
        self.lifetimes = Lifetimes(self.external, self.live_route)
        self.certificates = CertificateStore()
        # Why the config source's last read was refused (standalone's manifest errors).
        self.source_errors: list[str] = []
        # Counts already added to the Prometheus counters, per session.
        self._flushed: dict[Session, tuple[int, int, int, int]] = {}
        # Sessions whose route has an idle timeout:
        # session -> (timeout, bytes moved when last looked at, since when unchanged).
        self._idle_watch: dict[Session, tuple[float, int, float]] = {}

    @property
    def version(self) -> str | None:
        return self.active.config.version if self.active else None

    def report_source(self, errors: list[str]) -> None:
        self.source_errors = list(errors)

    def apply(self, config: GatewayConfig) -> bool:
        """Swap in a config; False when it is the version already active."""
        if self.active is not None and self.active.config.version == config.version:
            return False
        previous = self.active
        self.active = ActiveConfig(config, previous, self.endpoint_sessions, self.health,
                                   self.passwords, self.keysets, self.external)
        self.keysets.sync(p for route in config.routes for p in route.auth.jwt.providers)
        self.certificates.update(config.certificates)
        if previous is not None:
            metrics.CONFIG_INFO.remove(previous.config.version)
        metrics.CONFIG_INFO.labels(config.version).set(1)
        metrics.CONFIG_APPLIED.set(self.active.applied_at)
        closed = self._review_sessions(self.active)
        self.forget_removed_routes()
        log.info(
            "config applied",
            extra={
                "version": config.version,
                "previous": previous.config.version if previous else None,
                "routes": len(config.routes),
                "consumers": len(config.consumers),
                "sessions_closed": closed,
            },
        )
        return True

    def _review_sessions(self, active: ActiveConfig) -> int:
        """Hold every live session against the new config; close those it no longer allows.

        A session keeps running when its handshake would still reach the same route and
        its consumer still holds the credential it authenticated with and is still
        allowed there; everything else about the config may change around it.
        """
        return sum(self._review(active, session) for session in list(self.sessions))

    def _review(self, active: ActiveConfig, session: Session) -> bool:
        """Hold one session against a config; True when it was closed."""
        if session.closing:
            return False
        match = active.router.match(session.host, session.path)
        if match is None or match.route.key != session.route_key:
            session.close(CloseCode.GOING_AWAY, "route removed")
            return True
        route = match.route
        if not self._still_authorized(active, route, session):
            if route.on_credential_revoked == "Close":
                session.close(CloseCode.POLICY_VIOLATION, "credential revoked")
                return True
            return False
        if route.on_credential_expired == "Close" and self.lifetimes.expired(session):
            session.close(CloseCode.POLICY_VIOLATION, "credential expired")
            return True
        limits = route.limits
        session.set_limits(limits.max_message_bytes or 0, limits.messages_per_second or 0)
        self._watch_idle(session, route)
        return False

    @staticmethod
    def _still_authorized(active: ActiveConfig, route: Route, session: Session) -> bool:
        if route.auth.mode == "None":
            return True
        who = session.handshake.who
        identity = who.identity
        if identity is not None and identity.consumer is not None:
            assert session.consumer_key is not None
            assert session.credential_fingerprint is not None
            consumer = active.authenticator.holder(session.consumer_key,
                                                   session.credential_fingerprint)
            return consumer is not None and allows(route, consumer)
        # Vouched for by an auth server or an identity provider: still so while the route
        # still asks the same one.
        if who.method == "External":
            external = route.auth.external
            return external is not None and external.url == who.grant
        if who.method == "JWT":
            return "JWT" in route.auth.methods and provider_for(route, who.grant) is not None
        return False  # the route requires authentication now

    def live_route(self, session: Session) -> Route | None:
        """The session's route as the live config has it (None once it is gone)."""
        return self.active.routes.get(session.route_key) if self.active else None

    # -- limits --------------------------------------------------------------------
    def admission(self, route: Route, holder: Holder | None) -> Held:
        """Hold a place under the connection limits (the route's, and the consumer's on it
        and on all routes) for the whole handshake and the session after it; every way
        out (a refusal, a client gone, an error, the session's end) gives it back. With
        a shared store, one round trip on a limited route (limits.py)."""
        return Held(self.limits, route, holder)

    def _watch_idle(self, session: Session, route: Route) -> None:
        timeout = route.limits.idle_timeout_seconds
        if timeout:
            _, seen, since = self._idle_watch.get(session, (0.0, -1, 0.0))
            self._idle_watch[session] = (timeout, seen, since)
        else:
            self._idle_watch.pop(session, None)

    def tick(self, now: float) -> None:
        """Close sessions idle longer than their route allows (called every fraction of a
        second). Activity is read off the byte counters: no work per frame."""
        for session, (timeout, seen, since) in list(self._idle_watch.items()):
            moved = session.bytes_c2u + session.bytes_u2c
            if moved != seen:
                self._idle_watch[session] = (timeout, moved, now)
            elif now - since >= timeout and not session.closing:
                session.close(CloseCode.GOING_AWAY, "idle timeout")

    # -- sessions ----------------------------------------------------------------
    def session_started(self, session: Session) -> None:
        self.sessions.add(session)
        self._flushed[session] = (0, 0, 0, 0)
        self.endpoint_sessions[session.endpoint] += 1
        metrics.child(metrics.SESSIONS_ACTIVE, session.route_key).inc()
        self.lifetimes.started(session)
        snapshot = session.handshake.active
        if self.active is not None and self.active is not snapshot:
            # A config arrived while this handshake was under way: the session is held
            # against it now, as if it had been live then.
            self._review(self.active, session)
        else:
            self._watch_idle(session, session.handshake.route)

    def session_ended(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._flush(session)
        del self._flushed[session]
        self._idle_watch.pop(session, None)
        self.lifetimes.ended(session)
        if session.admission is not None:
            self.limits.release(session.admission)
            session.admission = None
        _decrement(self.endpoint_sessions, session.endpoint)
        metrics.child(metrics.SESSIONS_ACTIVE, session.route_key).dec()
        metrics.session_closed(session.route_key, session.closed_by, session.close_code,
                               session.close_reason)
        access_log.info("session", extra=session_record(session))

    async def flush_counters(self) -> None:
        """Add what live sessions relayed since the last flush to the counters, a batch
        at a time: with tens of thousands of sessions one pass would hold the loop."""
        for i, session in enumerate(list(self.sessions), 1):
            if session in self._flushed:  # not ended meanwhile
                self._flush(session)
            if i % FLUSH_BATCH == 0:
                await asyncio.sleep(0)

    def _flush(self, session: Session) -> None:
        now = (session.bytes_c2u, session.bytes_u2c, session.c2u.messages, session.u2c.messages)
        before = self._flushed[session]
        if now == before:
            return
        self._flushed[session] = now
        route = session.route_key
        metrics.child(metrics.BYTES, route, metrics.CLIENT_TO_UPSTREAM).inc(now[0] - before[0])
        metrics.child(metrics.BYTES, route, metrics.UPSTREAM_TO_CLIENT).inc(now[1] - before[1])
        metrics.child(metrics.MESSAGES, route, metrics.CLIENT_TO_UPSTREAM).inc(
            now[2] - before[2])
        metrics.child(metrics.MESSAGES, route, metrics.UPSTREAM_TO_CLIENT).inc(
            now[3] - before[3])

    def forget_removed_routes(self) -> None:
        """Drop the series of routes no longer in the config once nothing of theirs is
        live (so their last sessions' counts are not lost, and series stay bounded by
        the config, not by its history)."""
        if self.active is None:
            return
        live = {route.key for route in self.active.config.routes}
        metrics.forget_routes(key for key in metrics.routes()
                              if key and key not in live and not self.limits.counted(key))

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

    async def close(self) -> None:
        """Stop what runs in the background: rechecks, key refreshes, outbound connections."""
        await self.lifetimes.close()
        await self.keysets.close()
        await self.outbound.close()

    # -- summary -------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What GET /config shows: topology and counts, never credential material."""
        if self.active is None:
            return {"version": None}
        config = self.active.config
        return {
            "version": config.version,
            "appliedAt": self.active.applied_at,
            "routes": [route_summary(r) for r in config.routes],
            "consumers": [
                {"name": c.key, "username": c.username, "credentials": len(c.keys)}
                for c in config.consumers
            ],
            "certificates": [{"name": c.key, "hosts": list(c.hosts)}
                             for c in config.certificates],
            "identityProviders": self.keysets.summary(),
            "sessions": len(self.sessions),
            **({"limitsStore": store} if (store := self.limits.summary()) else {}),
        }


class Held:
    """``async with runtime.admission(...) as held``: a place under the limits while
    inside, or until the session it is handed over to ends (a class rather than a
    generator-based context manager: one per handshake)."""

    __slots__ = ("_admission", "_holder", "_limits", "_route")

    def __init__(self, limits: ConnectionLimits, route: Route, holder: Holder | None) -> None:
        self._limits, self._route, self._holder = limits, route, holder
        self._admission: Admission | None = None

    async def __aenter__(self) -> Held:
        self._admission = await self._limits.admit(self._route, self._holder)
        return self

    def hand_over(self, session: Session) -> None:
        """The session holds the place from now on; ``session_ended`` gives it back."""
        session.admission, self._admission = self._admission, None

    async def __aexit__(self, *_exc: object) -> None:
        if self._admission is not None:
            self._limits.release(self._admission)
            self._admission = None


def route_summary(route: Route) -> dict[str, Any]:
    return {
        "name": route.key,
        "generation": route.generation,
        "hosts": list(route.hosts),
        "paths": [f"{p.type} {p.value}" for p in route.paths],
        "backend": route.backend.service,
        "endpoints": [str(e) for e in route.backend.endpoints],
        "auth": route.auth.mode if route.auth.mode == "None" else list(route.auth.methods),
    }


def session_record(session: Session) -> dict[str, Any]:
    return {
        "route": session.route_key,
        "consumer": session.username,
        "auth": session.handshake.who.method,
        "upstream": str(session.endpoint),
        "duration_s": round(time.monotonic() - session.started, 3),
        "bytes_in": session.bytes_c2u,
        "bytes_out": session.bytes_u2c,
        "messages_in": session.c2u.messages,
        "messages_out": session.u2c.messages,
        "close_code": session.close_code,
        "closed_by": session.closed_by,
        "close_reason": session.close_reason if session.closed_by == "proxy" else None,
    }


def _decrement(counter: Counter[Any], key: Hashable) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
