"""Connection limits: a route's maxConnections and maxConnectionsPerConsumer, and a
consumer's maxConnections (on all routes together).

Each proxy counts its own live sessions (and the handshakes admitted but not yet
upgraded). With a shared store (``--limits-redis-url``) the same limits are counted
across every proxy in it: one round trip per handshake on a route with a connection
limit or by a consumer with one, none for any other handshake. While the store is
unavailable, failure mode ``open`` falls back to this proxy's own counts (so limits
never vanish), and ``closed`` refuses those handshakes with 503. Live sessions are never
closed because of the store.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Route
from .leases import Counter, Full, Lease, LeaseStore, StoreUnavailable
from .refusals import LimitReached, LimitsUnavailable


class Holder(Protocol):
    """Whom a handshake counts against (auth.Identity): a WsConsumer, or an identity an
    External auth server or an identity provider vouched for (no maxConnections of its
    own)."""

    @property
    def key(self) -> str: ...

    @property
    def max_connections(self) -> int | None: ...


@dataclass(eq=False, slots=True)
class Admission:
    """What one admitted handshake counts against; given back by ``release``."""

    route_key: str
    consumer: str | None
    lease: Lease | None = None


class ConnectionLimits:
    def __init__(self, shared: LeaseStore | None = None) -> None:
        self.shared = shared
        self._per_route: Tally[str] = Tally()
        self._per_route_consumer: Tally[tuple[str, str]] = Tally()
        self._per_consumer: Tally[str] = Tally()

    async def admit(self, route: Route, consumer: Holder | None) -> Admission:
        """Count a handshake, or raise LimitReached (503 for the route's limit, 429 for
        the consumer's)."""
        counters = self._counters(route, consumer) if self.shared is not None else []
        lease = None
        if counters:
            assert self.shared is not None
            try:
                lease = await self.shared.admit(counters)
            except Full as full:
                raise _fleet_refusal(route, full) from None
            except StoreUnavailable as unavailable:
                if self.shared.failure == "closed":
                    raise LimitsUnavailable(
                        "connection limits cannot be checked now (the limits store is "
                        "unavailable); retry later") from None
                self._check_locally(route, consumer)
                lease = unavailable.lease
                self.shared.hold(lease)
        else:
            self._check_locally(route, consumer)
        admission = Admission(route.key, consumer.key if consumer else None, lease)
        self._per_route[route.key] += 1
        if consumer is not None:
            self._per_route_consumer[(route.key, consumer.key)] += 1
            self._per_consumer[consumer.key] += 1
        return admission

    def release(self, admission: Admission) -> None:
        """Give back what admit() counted (a failed handshake, or a session's end)."""
        _decrement(self._per_route, admission.route_key)
        if admission.consumer is not None:
            _decrement(self._per_route_consumer, (admission.route_key, admission.consumer))
            _decrement(self._per_consumer, admission.consumer)
        if admission.lease is not None and self.shared is not None:
            self.shared.release(admission.lease)

    def counted(self, route_key: str) -> int:
        """Live sessions and admitted handshakes of a route on this proxy."""
        return self._per_route[route_key]

    @staticmethod
    def _counters(route: Route, consumer: Holder | None) -> list[Counter]:
        limits, namespace, name = route.limits, route.namespace, route.name
        counters = []
        if limits.max_connections:
            counters.append(Counter.route(namespace, name, limits.max_connections))
        if consumer is not None:
            if limits.max_connections_per_consumer:
                counters.append(Counter.route_consumer(
                    namespace, name, consumer.key, limits.max_connections_per_consumer))
            if consumer.max_connections:
                counters.append(Counter.consumer(namespace, consumer.key,
                                                 consumer.max_connections))
        return counters

    def _check_locally(self, route: Route, consumer: Holder | None) -> None:
        limits = route.limits
        if limits.max_connections and self._per_route[route.key] >= limits.max_connections:
            raise LimitReached(f"route {route.key} is at its limit of "
                               f"{limits.max_connections} connections on this proxy; retry "
                               "later")
        if consumer is None:
            return
        per_route = limits.max_connections_per_consumer
        if per_route and self._per_route_consumer[(route.key, consumer.key)] >= per_route:
            raise LimitReached(f"this consumer already holds {per_route} connections on "
                               f"route {route.key} on this proxy, its limit", status=429)
        total = consumer.max_connections
        if total and self._per_consumer[consumer.key] >= total:
            raise LimitReached(f"this consumer already holds {total} connections on this "
                               "proxy, its limit (spec.limits.maxConnections of WsConsumer "
                               f"{consumer.key})", status=429)

    def summary(self) -> dict[str, Any] | None:
        """The shared store's state, for GET /config."""
        if self.shared is None:
            return None
        return {"store": self.shared.options.location, "available": self.shared.up,
                "failureMode": self.shared.failure, "leases": self.shared.held}


def _fleet_refusal(route: Route, full: Full) -> LimitReached:
    counter, count = full.counter, full.count
    if counter.kind == "route":
        return LimitReached(f"route {route.key} is at its fleet-wide limit of "
                            f"{counter.limit} connections (counted across all proxies); "
                            "retry later")
    if counter.kind == "consumer":
        return LimitReached(f"this consumer already holds {count} connections across all "
                            f"routes and proxies; its fleet-wide limit is {counter.limit}",
                            status=429)
    return LimitReached(f"this consumer already holds {count} connections on route "
                        f"{route.key} across all proxies; its fleet-wide limit is "
                        f"{counter.limit}", status=429)


def _decrement(tally: Tally[Any], key: Hashable) -> None:
    tally[key] -= 1
    if tally[key] <= 0:
        del tally[key]
