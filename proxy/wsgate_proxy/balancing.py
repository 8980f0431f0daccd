"""Choosing the upstream endpoint of a new session."""

from __future__ import annotations

import itertools

from .config import Endpoint, Route


class RoundRobin:
    """Endpoints in turn; the whole list, rotated, so retries move on to the next ones."""

    def __init__(self, endpoints: tuple[Endpoint, ...], counter: itertools.count[int]) -> None:
        self._endpoints = endpoints
        self.counter = counter

    def candidates(self) -> list[Endpoint]:
        n = len(self._endpoints)
        if n == 0:
            return []
        start = next(self.counter) % n
        return [*self._endpoints[start:], *self._endpoints[:start]]


def balancer_for(route: Route, previous: RoundRobin | None) -> RoundRobin:
    # Keep the turn across config swaps, so a push does not send everyone to endpoint 0.
    counter = previous.counter if previous is not None else itertools.count()
    return RoundRobin(route.backend.endpoints, counter)
