"""Prometheus metrics of the proxy, served on the admin port at /metrics.

Every label takes its values from a small fixed set or from the config: the route
(bounded by the config, and forgotten once a removed route's last session ended),
an outcome, a direction, who closed, a close code *group* (a peer chooses its close
codes: 20,000 distinct ones must not make 20,000 series), and the proxy's own close
reasons. Nothing per consumer: consumers number in the tens of thousands and come and
go. Byte and message counts are accumulated on each session and added here
periodically and when it ends, so the data path does no metric work per chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from .frames import close_code_label

SESSIONS_ACTIVE = Gauge("wsgate_sessions_active", "Live WebSocket sessions, by route.",
                        ["route"])
HANDSHAKES = Counter(
    "wsgate_handshakes_total",
    "WebSocket handshakes by route and outcome.",
    ["route", "outcome"],
)
BYTES = Counter(
    "wsgate_relayed_bytes_total", "Bytes relayed, by route and direction.", ["route", "direction"]
)
MESSAGES = Counter(
    "wsgate_relayed_messages_total",
    "Data messages relayed, by route and direction.",
    ["route", "direction"],
)
SESSIONS_CLOSED = Counter(
    "wsgate_sessions_closed_total",
    "Ended sessions by route, who closed first (client, upstream, proxy), the close code "
    "(named codes as they are; 3xxx, 4xxx and invalid as groups) and, when the proxy "
    "closed, its reason (a peer's reason is free text: never a label).",
    ["route", "closed_by", "code", "reason"],
)
CONFIG_INFO = Gauge("wsgate_config_info", "The active config version (value 1).", ["version"])
CONFIG_APPLIED = Gauge(
    "wsgate_config_last_applied_timestamp_seconds", "When the active config was applied."
)
UPSTREAM_CONNECT = Histogram(
    "wsgate_upstream_connect_seconds",
    "Time to connect to an upstream and complete its WebSocket handshake.",
    ["route"],
    # Seven buckets (ten series a route with +Inf, sum and count; there were fifteen):
    # at a thousand routes this histogram is most of a scrape. Same host, same zone,
    # far or slow, failing.
    buckets=(0.001, 0.0025, 0.01, 0.025, 0.1, 0.5, 2.5),
)

EXTERNAL_AUTH = Counter(
    "wsgate_external_auth_total",
    "External auth decisions by route, phase (handshake, recheck) and result: allow, deny "
    "(the auth server's 401/403), error (anything else: another status, a timeout, a "
    "refused connection; the handshake gets 503), cached (an allow from the cache), "
    "shared (the answer of an identical call in flight), "
    "overloaded (too many calls waiting; 503).",
    ["route", "phase", "result"],
)
CREDENTIALS_EXPIRED = Counter(
    "wsgate_credentials_expired_total",
    "Live sessions whose credential ended (a JWT's exp plus the clock skew, an External "
    "answer's max-age or Expires), by route and action: closed (1008 credential expired) "
    "or kept (onCredentialExpired: Keep).",
    ["route", "action"],
)
EXTERNAL_AUTH_SECONDS = Histogram(
    "wsgate_external_auth_seconds",
    "Duration of External auth calls (answered or not), by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
JWKS_FETCHES = Counter(
    "wsgate_jwks_fetches_total",
    "Fetches of identity providers' discovery documents and key sets, by issuer (from "
    "the config) and result (ok, error).",
    ["issuer", "result"],
)
JWKS_KEYS = Gauge(
    "wsgate_jwks_keys",
    "Signing keys held per identity provider (the last good key set; kept when a fetch "
    "fails).",
    ["issuer"],
)

CLIENT_TO_UPSTREAM = "client_to_upstream"
UPSTREAM_TO_CLIENT = "upstream_to_client"

# The shared limits store (--limits-redis-url); absent without it.
LIMITS_STORE_UP = Gauge(
    "wsgate_limits_store_up",
    "1 while the shared limits store (Redis) answers, 0 during an outage (connection "
    "limits then count per proxy, or refuse with 503: --limits-redis-failure).",
    ["store"],
)
LIMITS_STORE_OUTAGES = Counter(
    "wsgate_limits_store_outages_total", "Times the shared limits store became unavailable."
)
LIMITS_STORE_LEASES = Gauge(
    "wsgate_limits_store_leases", "Leases this proxy holds in the shared limits store."
)
LIMITS_STORE_REREGISTERED = Counter(
    "wsgate_limits_store_reregistered_total",
    "Leases a renewal found missing from the store (lost in a Redis restart) and wrote again.",
)
LIMITS_STORE_SECONDS = Histogram(
    "wsgate_limits_store_seconds",
    "Round trips to the shared limits store: admit (one per limited handshake), renew "
    "(one per interval).",
    ["operation"],
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)

# Every child handed out, by metric and label values (a dict lookup is cheaper than
# ``labels()`` on each handshake), and the keys per route, so that a removed route's
# series can be removed.
_children: dict[tuple[Any, ...], Any] = {}
_by_route: dict[str, set[tuple[Any, ...]]] = {}


def child(metric: Any, route: str, *labels: str) -> Any:
    """``metric.labels(route, *labels)``, remembered under the route."""
    key = (metric, route, *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(route, *labels)
        _by_route.setdefault(route, set()).add(key)
    return found


def handshake(route: str, outcome: str) -> None:
    child(HANDSHAKES, route, outcome).inc()


def session_closed(route: str, closed_by: str | None, code: int | None, reason: str) -> None:
    child(SESSIONS_CLOSED, route, closed_by or "", close_code_label(code),
          reason if closed_by == "proxy" else "").inc()


def routes() -> set[str]:
    """The routes that have series."""
    return set(_by_route)


def forget_routes(keys: Iterable[str]) -> None:
    """Remove every series of these routes."""
    for route in keys:
        for key in _by_route.pop(route, ()):
            del _children[key]
            metric, *values = key
            with contextlib.suppress(KeyError):
                metric.remove(*values)


def forget_issuer(issuer: str) -> None:
    """Remove the series of an identity provider no route names any more (they are kept
    apart from the per-route children: their first label is an issuer, not a route)."""
    with contextlib.suppress(KeyError):
        JWKS_KEYS.remove(issuer)
    for result in ("ok", "error"):
        with contextlib.suppress(KeyError):
            JWKS_FETCHES.remove(issuer, result)
