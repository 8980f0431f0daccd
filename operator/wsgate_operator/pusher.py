"""Pushing the compiled config to every proxy pod, and knowing what each one runs.

One task per proxy brings it to the current config: skipped when the proxy already
runs that version, retried with growing backoff when a push fails, started at once
for a new pod. ``verify`` asks each proxy what it runs (GET /readyz), so a proxy that
restarted with an older saved config is brought up to date.

A push carries what changed (a config stream, config_stream.py): a proxy known to run
a recent version A gets the items changed from A to the current version, by key, and
answers with the version it now runs. A proxy on a version this operator did not
build (the operator restarted after a change made while it was down; the proxy
restarted from a saved config older than the history) is asked what it runs item by
item (GET /config/digests, listing.py) and gets what differs, as a delta from the
version it reports. A proxy with no config, one that cannot list (an older proxy:
404; an answer too large, late or malformed), and one that answers a delta with 409
(it ran something else after all, or its listing was not what it runs) get the whole
config: divergence is always caught by the version, never accumulated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from wsgate_proxy import config_stream, listing

from .compiler import Compiled
from .compiler.compiled import ItemKey
from .metrics import OperatorMetrics
from .status import ProxySync

log = logging.getLogger("wsgate.pusher")

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
# How many recent versions remember which route generations they hold, and what
# changed from each to the next (how far back a delta can start).
REMEMBERED_VERSIONS = 32
# A proxy's listing of what it runs (GET /config/digests) is about 45 bytes an item; one
# larger than this, or slower than LISTING_SECONDS, is given up for the whole config.
MAX_LISTING_BYTES = 32 * 1024 * 1024
LISTING_SECONDS = 10.0


@dataclass(frozen=True)
class ProxyTarget:
    """A running proxy pod: its identity (a recreated pod has a new uid) and admin URL."""

    name: str
    uid: str
    address: str
    port: int
    restarts: int = 0

    @property
    def base(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class _Running:
    version: str


@dataclass(frozen=True)
class _Diverged:
    version: str | None


def _answered_version(answer: str) -> str | None:
    try:
        version = json.loads(answer).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


class Pusher:
    def __init__(
        self,
        token: str,
        on_change: Callable[[], None],
        on_failure: Callable[[ProxyTarget, str], None] | None = None,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._token = token
        self.metrics = metrics or OperatorMetrics()
        self._on_change = on_change  # called when what the proxies run changes
        # Called once when a proxy starts failing (not on every retry), with the reason.
        self._on_failure = on_failure or (lambda _target, _reason: None)
        self._failing: set[str] = set()
        self._whole: set[str] = set()  # proxies whose next push is the whole config
        self._asked: set[str] = set()  # proxies asked what they run (or pushed to)
        self._config: Compiled | None = None
        self._full_body: bytes | None = None  # the current config whole, made when needed
        # The versions built, oldest first, each with the items changed from the one
        # before it.
        self._history: list[tuple[str, frozenset[ItemKey]]] = []
        self._targets: dict[str, ProxyTarget] = {}
        self._running: dict[str, str] = {}  # proxy -> version it runs
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Proxies being brought up to date right now (not those waiting to retry): while
        # any is, status writes wait (reconciler.py), so that they never delay a push.
        self._busy: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self._included: OrderedDict[str, frozenset[tuple[str, int]]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    # -- inputs ----------------------------------------------------------------------
    def set_config(self, config: Compiled) -> None:
        """A new build: every proxy is brought to it."""
        self._history.append((config.version, config.changed_items))
        del self._history[:-REMEMBERED_VERSIONS]
        if self._config is not None and config.version == self._config.version:
            self._config = config
            return
        previous, self._config = self._config, config
        self._full_body = None
        if previous is not None and previous.version in self._included and not any(
                kind == "route" for kind, _ in config.changed_items):
            included = self._included[previous.version]  # the same routes (most builds)
        else:
            included = frozenset((r.key, r.generation) for r in config.items["route"].values())
        self._included[config.version] = included
        self._included.move_to_end(config.version)
        while len(self._included) > REMEMBERED_VERSIONS:
            self._included.popitem(last=False)
        for name in self._targets:
            self._bring_up_to_date(name)

    def body_for(self, running: str | None) -> tuple[bytes, bool]:
        """The body that brings a proxy running ``running`` to the current config, and
        whether it is a delta."""
        config = self._config
        assert config is not None
        versions = [version for version, _ in self._history]
        if running is not None and running in versions:
            start = len(versions) - 1 - versions[::-1].index(running)
            changed = frozenset().union(*(keys for _, keys in self._history[start + 1:]))
            encoded = config.encoded
            return config_stream.encode(
                config.version, running,
                [(kind, encoded[(kind, key)][0]) for kind, key in sorted(changed)
                 if (kind, key) in encoded],
                [(kind, key) for kind, key in sorted(changed) if (kind, key) not in encoded],
            ), True
        return self.whole_body(), False

    @staticmethod
    def body_against(found: listing.Listing, config: Compiled) -> bytes:
        """A delta from what a proxy listed (GET /config/digests) to ``config``: the
        items whose short digest differs or that it lacks, and those it has alone."""
        listed, short = found.digests, listing.short
        return config_stream.encode(
            config.version, found.version,
            [(kind, body) for (kind, key), (body, digest) in config.encoded.items()
             if listed.get((kind, key)) != short(digest)],
            sorted(item for item in listed if item not in config.encoded))

    def whole_body(self) -> bytes:
        """The current config whole (made once per version)."""
        config = self._config
        assert config is not None
        if self._full_body is None:
            self._full_body = config_stream.encode(
                config.version, None,
                [(kind, body) for (kind, _key), (body, _digest) in config.encoded.items()])
        return self._full_body

    def set_targets(self, targets: list[ProxyTarget]) -> None:
        """The running proxy pods (with an IP) now; a new, recreated or restarted pod is
        pushed to at once."""
        current = {t.name: t for t in targets}
        changed = False
        for name in list(self._targets):
            if current.get(name) != self._targets[name]:
                self._forget(name)
                changed = True
        for name, target in current.items():
            if name not in self._targets:
                self._targets[name] = target
                changed = True
                self._bring_up_to_date(name)
        if changed:
            self._on_change()

    def _forget(self, name: str) -> None:
        self._set_busy(name, False)
        self._asked.discard(name)
        self._failing.discard(name)
        self._whole.discard(name)
        self._targets.pop(name, None)
        self._running.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    # -- outputs ---------------------------------------------------------------------
    def sync(self, route_key: str, generation: int) -> ProxySync:
        synced = sum(
            1 for name in self._targets
            if (route_key, generation) in self._included.get(self._running.get(name, ""), ())
        )
        return ProxySync(synced=synced, total=len(self._targets))

    def placement(self) -> tuple[tuple[str, frozenset[tuple[str, int]] | None], ...]:
        """Each proxy with the routes (key, generation) of the config it runs: what every
        route's ``sync`` follows. A build that changed no route keeps the set of the
        build before it (the same object), so equal placements compare in no time."""
        return tuple((name, self._included.get(self._running.get(name, "")))
                     for name in sorted(self._targets))

    def knows_every_proxy(self) -> bool:
        """Whether every proxy has been asked what it runs (or pushed to) at least once."""
        return self._targets.keys() <= self._asked

    def running(self) -> dict[str, str]:
        return dict(self._running)

    async def wait_idle(self) -> None:
        """Until no proxy is being brought up to date: each was asked what it runs and
        pushed to if it had to be (a proxy that keeps failing keeps this waiting)."""
        while busy := [t for t in self._tasks.values() if not t.done()]:
            await asyncio.wait(busy)

    # -- work --------------------------------------------------------------------------
    def _bring_up_to_date(self, name: str) -> None:
        if self._config is None or self._running.get(name) == self._config.version:
            return
        task = self._tasks.get(name)
        if task is None or task.done():
            self._set_busy(name, True)
            self._tasks[name] = asyncio.create_task(self._push_until_current(name))

    def _set_busy(self, name: str, busy: bool) -> None:
        if busy:
            self._busy.add(name)
            self.idle.clear()
        else:
            self._busy.discard(name)
            if not self._busy:
                self.idle.set()

    async def _push_until_current(self, name: str) -> None:
        try:
            await self._bring_one(name)
        finally:
            if self._tasks.get(name) is asyncio.current_task():
                self._set_busy(name, False)

    async def _bring_one(self, name: str) -> None:
        delay = FIRST_RETRY_SECONDS
        target = self._targets.get(name)
        if target is not None and name not in self._running:
            # A proxy first seen (or a restarted operator) may run the current config
            # already: ask before pushing, so a restart pushes nothing it need not.
            version = await self._ask_version(target)
            if name in self._targets:
                self._asked.add(name)
                if version:
                    self._running[name] = version
                self._on_change()
        while True:
            target, config = self._targets.get(name), self._config
            if target is None or config is None or self._running.get(name) == config.version:
                return
            running = None if name in self._whole else self._running.get(name)
            listed = running is not None and not self._remembers(running)
            if listed:
                # A version this operator did not build: what the proxy runs, item by item.
                found = await self._ask_listing(target)
                target, config = self._targets.get(name), self._config
                if target is None or config is None:
                    return
                if found is None:
                    self._whole.add(name)
                    continue
                if found.version == config.version:
                    self._running[name] = found.version
                    self._on_change()
                    continue
                if self._remembers(found.version):
                    body, delta = self.body_for(found.version)
                else:  # 20-30 ms at 50,000 consumers: off the loop, as compiles are
                    body, delta = await asyncio.to_thread(self.body_against, found, config), True
            else:
                body, delta = self.body_for(running)
            answer = await self._push(target, config.version, body, delta)
            if isinstance(answer, _Running):
                if name in self._targets:
                    self._running[name] = answer.version
                    self._failing.discard(name)
                    self._whole.discard(name)
                    if listed and answer.version != config.version:
                        self._whole.add(name)  # not what it listed: no second listing
                    self._on_change()
                continue  # the config may have moved on meanwhile
            if isinstance(answer, _Diverged) and delta:
                # It runs something else than we thought: what it says it runs, and the
                # next push whole.
                if answer.version:
                    self._running[name] = answer.version
                else:
                    self._running.pop(name, None)
                self._whole.add(name)
                self._on_change()
                continue
            if isinstance(answer, _Diverged):
                answer = f"the proxy refused the whole config {config.version} (HTTP 409)"
            if name not in self._failing:
                self._failing.add(name)
                self._on_failure(target, answer)
            self._set_busy(name, False)  # a proxy that keeps failing holds up nothing else
            await asyncio.sleep(delay)
            self._set_busy(name, True)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _push(self, target: ProxyTarget, version: str, body: bytes,
                    delta: bool) -> _Running | _Diverged | str:
        """What the proxy runs now, that a delta did not fit what it runs, or why the
        push failed."""
        started = time.perf_counter()
        kind = "delta" if delta else "full"
        try:
            async with self._http().put(
                f"{target.base}/config", data=body,
                headers={"Authorization": f"Bearer {self._token}",
                         "Content-Type": config_stream.MEDIA_TYPE},
            ) as response:
                answer = await response.text()
                self.metrics.push_bytes.labels(kind).inc(len(body))
                if response.status == 200:
                    self.metrics.pushes.labels("ok").inc()
                    self.metrics.push_seconds.observe(time.perf_counter() - started)
                    log.info("config pushed", extra={"proxy": target.name, "version": version,
                                                     "kind": kind, "bytes": len(body)})
                    return _Running(_answered_version(answer) or version)
                if response.status == 409:
                    self.metrics.pushes.labels("diverged").inc()
                    log.info("proxy runs another version; pushing the whole config",
                             extra={"proxy": target.name, "answer": answer[:500]})
                    return _Diverged(_answered_version(answer))
                outcome = "refused" if response.status in (401, 403) else "rejected"
                self.metrics.pushes.labels(outcome).inc()
                log.error("proxy refused the config", extra={
                    "proxy": target.name, "status": response.status, "answer": answer[:500],
                    "version": version})
                if response.status in (401, 403):
                    return (f"the proxy refused the admin token (HTTP {response.status}): the "
                            "operator and the proxies must share the same token")
                return f"the proxy rejected config {version} (HTTP {response.status})"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.metrics.pushes.labels("unreachable").inc()
            reason = str(exc) or type(exc).__name__
            log.warning("proxy unreachable", extra={"proxy": target.name, "error": reason})
            return f"cannot reach the proxy's admin API at {target.base}: {reason}"

    async def _ask_version(self, target: ProxyTarget) -> str | None:
        """What the proxy runs (None if it has no config, or cannot be asked)."""
        try:
            async with self._http().get(f"{target.base}/readyz") as response:
                version = (await response.json()).get("version")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None
        return version if isinstance(version, str) else None

    def _remembers(self, version: str) -> bool:
        return any(built == version for built, _ in self._history)

    async def _ask_listing(self, target: ProxyTarget) -> listing.Listing | None:
        """What the proxy runs, item by item (None when it cannot say: the operator then
        pushes the whole config)."""
        outcome, reason = "failed", ""
        try:
            async with self._http().get(
                    f"{target.base}/config/digests",
                    headers={"Authorization": f"Bearer {self._token}"},
                    timeout=aiohttp.ClientTimeout(total=LISTING_SECONDS)) as response:
                if response.status == 404:
                    outcome, reason = "unsupported", "the proxy has no GET /config/digests"
                elif response.status != 200:
                    reason = f"HTTP {response.status}"
                elif (response.content_length or 0) > MAX_LISTING_BYTES:
                    reason = f"{response.content_length} bytes"
                else:
                    body = bytearray()
                    async for chunk in response.content.iter_any():
                        body += chunk
                        if len(body) > MAX_LISTING_BYTES:
                            reason = f"more than {MAX_LISTING_BYTES} bytes"
                            break
                    else:
                        found = await asyncio.to_thread(listing.parse, bytes(body))
                        self.metrics.listings.labels("used").inc()
                        return found
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
        self.metrics.listings.labels(outcome).inc()
        log.warning("cannot list what the proxy runs; pushing the whole config",
                    extra={"proxy": target.name, "reason": reason[:500]})
        return None

    async def verify(self) -> None:
        """Ask every proxy what it runs; bring those that differ up to date."""
        async def one(name: str, target: ProxyTarget) -> None:
            version = await self._ask_version(target)
            if version != self._running.get(name) and name in self._targets:
                if version:
                    self._running[name] = version
                else:
                    self._running.pop(name, None)
                self._on_change()
            self._bring_up_to_date(name)

        await asyncio.gather(*(one(n, t) for n, t in list(self._targets.items())))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))
        return self._session

    async def close(self) -> None:
        for name in list(self._targets):
            self._forget(name)
        if self._session is not None:
            await self._session.close()
