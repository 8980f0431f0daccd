"""The live runtime: the active config in the form the data path reads it, and the
registry of live sessions.

A new config is compiled into an ActiveConfig off to the side and swapped in with
one assignment, so a handshake sees either the old config or the new one, whole.
Sessions hold what they need of their route; a swap leaves them running.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from . import metrics
from .auth import Authenticator
from .balancing import RoundRobin, balancer_for
from .config import GatewayConfig, Route
from .relay import Session
from .routing import Router

access_log = logging.getLogger("wsgate.access")
log = logging.getLogger("wsgate.runtime")


class ActiveConfig:
    def __init__(self, config: GatewayConfig, previous: ActiveConfig | None) -> None:
        self.config = config
        self.router = Router(config.routes)
        self.authenticator = Authenticator(config.consumers)
        old = previous.balancers if previous is not None else {}
        self.balancers: dict[str, RoundRobin] = {
            route.key: balancer_for(route, old.get(route.key)) for route in config.routes
        }
        self.applied_at = time.time()


class Runtime:
    def __init__(self) -> None:
        self.active: ActiveConfig | None = None
        self.sessions: set[Session] = set()
        # Counts already added to the Prometheus counters, per session.
        self._flushed: dict[Session, tuple[int, int, int, int]] = {}

    @property
    def version(self) -> str | None:
        return self.active.config.version if self.active else None

    def apply(self, config: GatewayConfig) -> bool:
        """Swap in a config; False when it is the version already active."""
        if self.active is not None and self.active.config.version == config.version:
            return False
        previous = self.active
        self.active = ActiveConfig(config, previous)
        if previous is not None:
            metrics.CONFIG_INFO.remove(previous.config.version)
        metrics.CONFIG_INFO.labels(config.version).set(1)
        metrics.CONFIG_APPLIED.set(self.active.applied_at)
        log.info(
            "config applied",
            extra={
                "version": config.version,
                "previous": previous.config.version if previous else None,
                "routes": len(config.routes),
                "consumers": len(config.consumers),
            },
        )
        return True

    # -- sessions ----------------------------------------------------------------
    def session_started(self, session: Session) -> None:
        self.sessions.add(session)
        self._flushed[session] = (0, 0, 0, 0)
        metrics.SESSIONS_ACTIVE.labels(session.route_key, session.username or "").inc()

    def session_ended(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._flush(session)
        del self._flushed[session]
        metrics.SESSIONS_ACTIVE.labels(session.route_key, session.username or "").dec()
        metrics.SESSIONS_CLOSED.labels(
            session.route_key, session.closed_by or "", str(session.close_code or "")
        ).inc()
        access_log.info("session", extra=session_record(session))

    def flush_counters(self) -> None:
        """Add what live sessions relayed since the last flush to the counters."""
        for session in self.sessions:
            self._flush(session)

    def _flush(self, session: Session) -> None:
        now = (session.bytes_c2u, session.bytes_u2c, session.c2u.messages, session.u2c.messages)
        before = self._flushed[session]
        if now == before:
            return
        self._flushed[session] = now
        route = session.route_key
        metrics.BYTES.labels(route, metrics.CLIENT_TO_UPSTREAM).inc(now[0] - before[0])
        metrics.BYTES.labels(route, metrics.UPSTREAM_TO_CLIENT).inc(now[1] - before[1])
        metrics.MESSAGES.labels(route, metrics.CLIENT_TO_UPSTREAM).inc(now[2] - before[2])
        metrics.MESSAGES.labels(route, metrics.UPSTREAM_TO_CLIENT).inc(now[3] - before[3])

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

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
            "sessions": len(self.sessions),
        }


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
        "upstream": str(session.endpoint),
        "duration_s": round(time.monotonic() - session.started, 3),
        "bytes_in": session.bytes_c2u,
        "bytes_out": session.bytes_u2c,
        "messages_in": session.c2u.messages,
        "messages_out": session.u2c.messages,
        "close_code": session.close_code,
        "closed_by": session.closed_by,
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
