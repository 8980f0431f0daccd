"""Prometheus metrics of the proxy, served on the admin port at /metrics.

Labels carry route and consumer names, never credentials. Byte and message counts
are accumulated on each session and added here periodically and when it ends, so
the data path does no metric work per chunk.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_ACTIVE = Gauge(
    "wsgate_sessions_active", "Live WebSocket sessions.", ["route", "consumer"]
)
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
    "Ended sessions by route, who closed first, the close code and, when the proxy "
    "closed, its reason (a peer's reason is not a label: it is free text).",
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
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
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
