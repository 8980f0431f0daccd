"""Matching a handshake's host and path to a route.

Precedence follows the Gateway API: the most specific host first (an exact name,
then the longest ``*.`` wildcard, then routes without hosts), and within it an
Exact path before the longest Prefix. Prefixes match whole path segments: ``/ws``
matches ``/ws`` and ``/ws/x``, never ``/wsx``.

Paths are normalized before matching (percent-decoding, dot segments, repeated
slashes) and the normalized path is what the upstream receives, so an encoded
path can never match one route here and mean another route's path upstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

from .config import PathMatch, Route
from .slices import SliceClock

_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class BadPath(ValueError):
    """A request path the proxy refuses to interpret (answered with 400)."""


def normalize_path(raw_path: str) -> str:
    """The decoded, dot-segment-free path of a request target (without its query)."""
    if not raw_path.startswith("/"):
        raise BadPath("the request target must be an absolute path starting with '/'")
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise BadPath("encoded '/', '\\' or NUL characters are not accepted in the path")
    decoded = unquote(raw_path, errors="strict")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(segments)
    if decoded.endswith("/") and segments:
        path += "/"
    return path


def quote_path(path: str) -> str:
    return quote(path, safe=_PATH_SAFE)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    path: PathMatch
    upstream_path: str  # normalized and rewritten, not yet percent-encoded


class _PathTable:
    """The paths of one host: Exact paths and Prefixes, each in a dict, so that a
    lookup costs the path's segments, not the route count."""

    def __init__(self) -> None:
        self.exact: dict[str, tuple[Route, PathMatch]] = {}
        self.prefixes: dict[str, tuple[Route, PathMatch]] = {}

    def add(self, route: Route, path: PathMatch) -> None:
        # The first route (in config order: namespace/name) keeps a contested path.
        if path.type == "Exact":
            self.exact.setdefault(path.value, (route, path))
        else:
            self.prefixes.setdefault(path.value.rstrip("/"), (route, path))

    def match(self, path: str) -> Match | None:
        hit = self.exact.get(path)
        if hit is not None:
            route, pm = hit
            rewrite = route.backend.path_rewrite
            return Match(route, pm, rewrite if rewrite is not None else path)
        if not self.prefixes:
            return None
        # The longest prefix that ends at a segment boundary: the path itself, then the
        # path cut at each '/' from the right ("" for "/" matches everything).
        end = len(path)
        candidate = path if not path.endswith("/") else None
        while True:
            if candidate is not None and (hit := self.prefixes.get(candidate)) is not None:
                route, pm = hit
                return Match(route, pm, _rewrite(path, candidate, route.backend.path_rewrite))
            end = path.rfind("/", 0, end)
            if end < 0:
                return None
            candidate = path[:end]


def _rewrite(path: str, prefix: str, replacement: str | None) -> str:
    if replacement is None:
        return path
    rest = path[len(prefix):]
    if not rest:
        return replacement
    return replacement.rstrip("/") + rest


class Router:
    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact_hosts: dict[str, _PathTable] = {}
        self._wildcards: dict[str, _PathTable] = {}  # suffix including the leading dot
        self._any = _PathTable()
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Add a route after those added before (the first to claim a path keeps it)."""
        tables = [self._table_for(host) for host in route.hosts] or [self._any]
        for table in tables:
            for path in route.paths:
                table.add(route, path)

    def adding(self, routes: Iterable[Route], clock: SliceClock) -> Iterator[None]:
        """Add routes, yielding whenever ``clock`` says the slice is due (ten thousand
        routes take 20-30 ms to add: a slice at a time on the loop)."""
        for route in routes:
            self.add(route)
            if clock.due():
                yield None
                clock.restart()

    def _table_for(self, host: str) -> _PathTable:
        if host.startswith("*."):
            return self._wildcards.setdefault(host[1:], _PathTable())
        return self._exact_hosts.setdefault(host, _PathTable())

    def match(self, host: str, path: str) -> Match | None:
        """The route for a Host header value (port ignored) and a normalized path."""
        name = _hostname(host)
        table = self._exact_hosts.get(name)
        if table is not None and (found := table.match(path)):
            return found
        if self._wildcards:
            # The longest wildcard first: the name less its first label, then less the
            # next one (a wildcard never matches the bare suffix itself).
            dot = name.find(".", 1)
            while dot > 0:
                table = self._wildcards.get(name[dot:])
                if table is not None and (found := table.match(path)):
                    return found
                dot = name.find(".", dot + 1)
        return self._any.match(path)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host.split("]", 1)[0] + "]"
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")
