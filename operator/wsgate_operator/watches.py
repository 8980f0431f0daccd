"""The operator's view of the cluster kept current: each watched kind (kinds.py) listed,
then watched from the list's resourceVersion, every event absorbed into the cache.

Why not kopf's watches: kopf gives each event of each object a worker task, a body
wrapper, a per-object memory and a handler call with its filter and its logger, about
120 µs an event. Each status the operator writes comes back as an event, so a first
start at 50,000 consumers held the loop for 6-8 s on its own status echoes, and a key
rotated meanwhile waited for them; kopf also delivered every object listed at start a
second time. Here an event is a parsed line and a few dict lookups (an echo of our own
status write is recognised without copying or hashing the body), the list at start is
the watch's starting point (nothing is delivered twice), and a stream's events are
absorbed a slice of the loop at a time. kopf runs the operator's lifecycle
(handlers.py): login, start-up, clean-up and the liveness probe.

What a watch does with the API's answers, as client-go's reflector does:
  - a stream that ends (the server's timeout, a dropped connection) is watched again
    from the last resourceVersion seen (BOOKMARK events move it without an object);
  - 410 Gone (as an HTTP status or an ERROR event: the version was compacted away)
    lists the scope again: what the list holds is absorbed, what it no longer holds is
    removed (deleted while the watch was away);
  - anything else (an error status, a line that is not JSON, a line over
    MAX_LINE_BYTES, no byte for longer than the server's timeout allows, a stream
    that ends at once with no event) is logged with what was wrong, counted, and
    retried after a growing backoff; the other kinds' watches are not affected.
An object that stops passing its kind's filter (a Secret whose credential label was
removed) is removed from the view, as if deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from wsgate_proxy.slices import SliceClock

from .cache import ClusterCache, fingerprint, key_of
from .kinds import KINDS, PROXY_POD, Kind
from .kube import KubeApi
from .metrics import OperatorMetrics
from .options import OperatorOptions

log = logging.getLogger("wsgate.watches")

# The server ends a watch after this long (timeoutSeconds); the operator then watches
# again from where it was. A read that gets no byte for this long plus a margin is a
# connection that went dead without closing.
WATCH_SECONDS = 300
READ_MARGIN_SECONDS = 30.0
LIST_TIMEOUT_SECONDS = 120.0
REQUEST_CONNECT_SECONDS = 10.0
# The API's objects are at most about 1.5 MB (etcd's request limit); a line longer than
# this is not an event of a sane API server.
MAX_LINE_BYTES = 8 * 1024 * 1024
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
# Events absorbed between two looks at the clock: absorbing one takes microseconds.
SLICE_EVERY = 16


class WatchFailed(Exception):
    """The API's answer to a list or a watch was not what the API promises."""


class Expired(WatchFailed):
    """410 Gone: the resourceVersion asked for is older than the API keeps."""


@dataclass(frozen=True)
class Scope:
    """One list-and-watch: a kind in one namespace (or in all), maybe by label."""

    kind: Kind
    namespace: str | None
    label_selector: str | None = None

    @property
    def path(self) -> str:
        kind = self.kind
        prefix = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
        where = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{prefix}{where}/{kind.plural}"

    def covers(self, namespace: str) -> bool:
        return self.namespace is None or namespace == self.namespace

    def __str__(self) -> str:
        return f"{self.kind.plural} in {self.namespace or 'every namespace'}"


def scopes(options: OperatorOptions) -> list[Scope]:
    """What the operator lists and watches: each compiled kind in each watched namespace
    (or cluster-wide), and the proxy pods in theirs, by the proxies' labels."""
    namespaces: list[str | None] = list(options.namespaces) or [None]
    selector = ",".join(f"{k}={v}" for k, v in sorted(options.proxy_selector.items()))
    return [Scope(kind, options.proxy_namespace, selector or None) if kind is PROXY_POD
            else Scope(kind, namespace)
            for kind in KINDS for namespace in ([None] if kind is PROXY_POD else namespaces)]


def absorb(cache: ClusterCache, kind: Kind, event_type: str, body: dict[str, Any],
           options: OperatorOptions) -> bool:
    """One event into the cache; whether it changed anything a build or the pusher reads.
    ``body`` is the operator's own (freshly parsed), never changed afterwards."""
    if event_type == "DELETED" or not kind.filter(body, options):
        return cache.remove(kind, body)
    if cache.holds(kind, body):
        return False  # the version held already
    if kind.status_subresource and cache.restatused(kind, body):
        return False  # a status written (ours, as a rule): nothing a build reads moved
    meta = body.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    body["kind"], body["apiVersion"] = kind.kind, kind.api_version
    return cache.put(kind, body, fingerprint(kind, body))


class Watches:
    """Lists every scope (``list_all``, at start), then watches each (``run``) for as long
    as the operator runs; ``on_change(kind)`` is called for each event that changed the
    view."""

    def __init__(self, api: KubeApi, cache: ClusterCache, options: OperatorOptions,
                 on_change: Callable[[Kind], None], metrics: OperatorMetrics,
                 *, watch_seconds: int = WATCH_SECONDS) -> None:
        self._api, self._cache, self._options = api, cache, options
        self._on_change = on_change
        self._metrics = metrics
        self._watch_seconds = watch_seconds
        self._versions: dict[Scope, str] = {}  # where each scope's watch resumes

    async def list_all(self) -> None:
        """List every scope once, into the cache (a failure raises: the operator does
        not start on a partial view)."""
        for scope in scopes(self._options):
            self._versions[scope] = await self._list(scope)

    def run(self) -> list[asyncio.Task[None]]:
        """A task per scope, watching from where its list left off."""
        return [asyncio.create_task(self._watch(scope), name=f"watch {scope}")
                for scope in self._versions]

    async def _list(self, scope: Scope) -> str:
        """List a scope into the cache; what the cache holds of it that the list does
        not is removed. Returns the list's resourceVersion."""
        params = {"labelSelector": scope.label_selector} if scope.label_selector else {}
        async with self._api.http().get(
                self._api.host + scope.path, params=params, headers=self._api.headers(),
                timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT_SECONDS)) as response:
            raw = await response.read()
            if response.status != 200:
                raise WatchFailed(f"listing {scope}: the API answered {response.status}: "
                                  f"{raw[:300].decode(errors='replace')}")
        # Tens of megabytes at 50,000 objects: parsed off the loop.
        try:
            listing = await asyncio.to_thread(json.loads, raw)
        except ValueError as exc:
            raise WatchFailed(f"listing {scope}: the answer is not JSON ({exc}): "
                              f"{raw[:100].decode(errors='replace')!r}") from None
        items = listing.get("items") if isinstance(listing, dict) else None
        version = ((listing.get("metadata") or {}).get("resourceVersion")
                   if isinstance(listing, dict) else None)
        if not isinstance(items, list) or not isinstance(version, str):
            raise WatchFailed(f"listing {scope}: the answer has no items or no "
                              "metadata.resourceVersion")
        kind, listed, clock = scope.kind, set(), SliceClock(every=SLICE_EVERY)
        changed = False
        for item in items:
            if not _is_object(item):
                continue
            listed.add(key_of(kind, item))
            changed |= absorb(self._cache, kind, "ADDED", item, self._options)
            if clock.due():
                await clock.pause()
        for key in self._cache.keys(kind):
            if scope.covers(key[1]) and key not in listed:
                changed |= self._cache.remove_key(kind, key)
        if changed:
            self._on_change(kind)
        log.info("listed", extra={"scope": str(scope), "objects": len(items),
                                  "resource_version": version})
        return version

    async def _watch(self, scope: Scope) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                started = time.monotonic()
                if await self._stream(scope):
                    delay = FIRST_RETRY_SECONDS  # it delivered: the next failure is new
                    continue
                if time.monotonic() - started >= self._watch_seconds / 2:
                    continue  # the server's timeout, on a quiet kind
                # Ended at once with nothing: asked again at once, it would be asked in a
                # tight loop.
                raise WatchFailed(f"watching {scope}: the stream ended at once, empty")
            except Expired:
                self._metrics.watch_restarts.labels(scope.kind.kind, "expired").inc()
                log.info("watch expired; listing again", extra={"scope": str(scope)})
                try:
                    self._versions[scope] = await self._list(scope)
                    continue
                except (WatchFailed, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    reason = _reason(exc)
            except (WatchFailed, aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = _reason(exc)
            self._metrics.watch_restarts.labels(scope.kind.kind, "failed").inc()
            log.warning("watch failed; retrying", extra={
                "scope": str(scope), "error": reason, "retry_seconds": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _stream(self, scope: Scope) -> bool:
        """Watch a scope until the server ends the stream; whether any event came."""
        params = {"watch": "true", "allowWatchBookmarks": "true",
                  "resourceVersion": self._versions[scope],
                  "timeoutSeconds": str(self._watch_seconds)}
        if scope.label_selector:
            params["labelSelector"] = scope.label_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_CONNECT_SECONDS,
                                        sock_read=self._watch_seconds + READ_MARGIN_SECONDS)
        async with self._api.http().get(
                self._api.host + scope.path, params=params, headers=self._api.headers(),
                timeout=timeout) as response:
            if response.status == 410:
                raise Expired(f"watching {scope}: 410 Gone")
            if response.status != 200:
                text = (await response.content.read(300)).decode(errors="replace")
                raise WatchFailed(f"watching {scope}: the API answered {response.status}: "
                                  f"{text}")
            return await self._absorb_stream(scope, response.content)

    async def _absorb_stream(self, scope: Scope, content: aiohttp.StreamReader) -> bool:
        kind, cache, options = scope.kind, self._cache, self._options
        clock, delivered, changed = SliceClock(every=SLICE_EVERY), False, False
        buffer = bytearray()  # what came after the last whole line
        async for chunk in content.iter_any():
            # Only the new bytes are searched for the end of a line: a long event that
            # comes in many chunks is neither searched nor copied again for each.
            search, start = len(buffer), 0
            buffer += chunk
            while (end := buffer.find(b"\n", search)) >= 0:
                line, start = bytes(buffer[start:end]), end + 1
                search = start
                if not line.strip():
                    continue
                event_type, body = _event(scope, line)
                delivered = True
                version = (body.get("metadata") or {}).get("resourceVersion")
                if event_type != "BOOKMARK":
                    changed |= absorb(cache, kind, event_type, body, options)
                if isinstance(version, str) and version:
                    self._versions[scope] = version
                if clock.due():
                    if changed:
                        self._on_change(kind)
                        changed = False
                    await clock.pause()
            del buffer[:start]
            if len(buffer) > MAX_LINE_BYTES:
                raise WatchFailed(f"watching {scope}: an event over {MAX_LINE_BYTES} bytes")
            if changed:
                self._on_change(kind)
                changed = False
        if buffer.strip():
            raise WatchFailed(f"watching {scope}: the stream ended inside an event")
        return delivered


_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})


def _event(scope: Scope, line: bytes) -> tuple[str, dict[str, Any]]:
    """A watch line's type and object; ERROR events and garbage raise."""
    try:
        event = json.loads(line)
    except ValueError:
        raise WatchFailed(f"watching {scope}: a line that is not JSON: "
                          f"{line[:100].decode(errors='replace')!r}") from None
    if not isinstance(event, dict):
        raise WatchFailed(f"watching {scope}: an event that is not a JSON object")
    event_type, body = event.get("type"), event.get("object")
    if event_type == "ERROR":
        status = body if isinstance(body, Mapping) else {}
        if status.get("code") == 410:
            raise Expired(f"watching {scope}: {status.get('message') or '410 Gone'}")
        raise WatchFailed(f"watching {scope}: the API sent an error: "
                          f"{str(status.get('message') or status)[:300]}")
    if event_type not in _TYPES or not isinstance(body, dict) or (
            event_type != "BOOKMARK" and not _is_object(body)):
        raise WatchFailed(f"watching {scope}: an event of type {event_type!r} without an "
                          "object with metadata.name")
    return event_type, body


def _is_object(body: Any) -> bool:
    meta = body.get("metadata") if isinstance(body, dict) else None
    return isinstance(meta, dict) and isinstance(meta.get("name"), str) and bool(meta["name"])


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
