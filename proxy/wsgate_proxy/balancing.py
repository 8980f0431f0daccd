"""Choosing the upstream endpoint of a new session.

A balancer returns every endpoint of the route in the order to try them: the first
is the choice, the rest are where retries go. Endpoints that failed recently
(passive health) move to the back of that order, so they are tried only when
nothing healthy is left.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import Counter

from .config import Endpoint, LoadBalancing, Route

_MASK64 = (1 << 64) - 1
# How long a failing endpoint is passed over: doubling from the first, up to the last.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0


class EndpointHealth:
    """Passive health: endpoints that just failed a connect or handshake are avoided
    for a while, longer each time they fail again, until one attempt succeeds."""

    def __init__(self) -> None:
        self._failing: dict[Endpoint, tuple[int, float]] = {}  # -> (failures, avoid until)

    def failed(self, endpoint: Endpoint, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._failing.get(endpoint, (0, 0.0))[0] + 1
        backoff = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))
        self._failing[endpoint] = (failures, now + backoff)

    def succeeded(self, endpoint: Endpoint) -> None:
        self._failing.pop(endpoint, None)

    def avoided(self, endpoint: Endpoint, now: float) -> bool:
        entry = self._failing.get(endpoint)
        return entry is not None and entry[1] > now

    def healthy_first(self, endpoints: list[Endpoint]) -> list[Endpoint]:
        if not self._failing:
            return endpoints
        now = time.monotonic()
        return sorted(endpoints, key=lambda e: self.avoided(e, now))  # stable


class Balancer:
    def __init__(
        self,
        endpoints: tuple[Endpoint, ...],
        policy: LoadBalancing,
        *,
        turn: itertools.count[int],
        sessions: Counter[Endpoint],
        health: EndpointHealth,
    ) -> None:
        self._endpoints = endpoints
        self._policy = policy
        self.turn = turn  # kept across config swaps by the runtime
        self._sessions = sessions  # live sessions per endpoint, kept by the runtime
        self._health = health
        self._hashes = [_endpoint_hash(e) for e in endpoints]

    def candidates(self, hash_key: str | None = None) -> list[Endpoint]:
        """All endpoints, in the order to try them."""
        endpoints = self._endpoints
        if not endpoints:
            return []
        algorithm = self._policy.algorithm
        if algorithm == "ConsistentHash" and hash_key is not None:
            order = _rendezvous(endpoints, self._hashes, hash_key)
        else:
            start = next(self.turn) % len(endpoints)
            order = [*endpoints[start:], *endpoints[:start]]
            if algorithm == "LeastConnections":
                order.sort(key=self._sessions.__getitem__)  # stable: ties keep their turn
        return self._health.healthy_first(order)


def _endpoint_hash(endpoint: Endpoint) -> int:
    return int.from_bytes(hashlib.blake2b(str(endpoint).encode(), digest_size=8).digest())


def _mix(x: int) -> int:
    """splitmix64's finalizer: spreads one 64-bit value over all bits."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def _rendezvous(endpoints: tuple[Endpoint, ...], hashes: list[int], key: str) -> list[Endpoint]:
    """Highest-random-weight hashing: each key ranks the endpoints by a score of its own.
    The same key picks the same endpoint for as long as the set is unchanged, and adding
    or removing one endpoint moves only the keys that rank it first (about 1/N)."""
    k = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest())
    scores = [_mix(k ^ h) for h in hashes]
    return [e for _, e in sorted(zip(scores, endpoints, strict=True), key=lambda p: -p[0])]


def balancer_for(
    route: Route,
    endpoints: tuple[Endpoint, ...],
    previous: Balancer | None,
    sessions: Counter[Endpoint],
    health: EndpointHealth,
) -> Balancer:
    # Keep the turn across config swaps, so a push does not send everyone to endpoint 0.
    turn = previous.turn if previous is not None else itertools.count()
    return Balancer(endpoints, route.backend.load_balancing,
                    turn=turn, sessions=sessions, health=health)
