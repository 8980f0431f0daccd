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
import contextlib
import functools
import gc
import logging
import ssl
import sys
import time
from collections import Counter
from collections.abc import Hashable, Iterator
from typing import Any

from . import config_stream, metrics
from .accesslog import log_session
from .auth import Authenticator, allows
from .balancing import Balancer, EndpointHealth, balancer_for
from .config import (
    ITEM_FIELDS,
    ITEM_MODELS,
    Endpoint,
    GatewayConfig,
    Item,
    JwtProvider,
    Route,
    version_of,
)
from .config_stream import ConfigChange
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
from .slices import SliceClock
from .tls import CertificateStore, upstream_context

access_log = logging.getLogger("wsgate.access")
log = logging.getLogger("wsgate.runtime")


class ConfigMismatch(ValueError):
    """A change that cannot be applied to the active config: it starts from another
    version, or does not lead to the version it claims."""


class ActiveConfig:
    """A config in the form the data path reads it. Made from the one before and a
    change, at the cost of the change: indexes are copied (dict copies, no Python loop
    per item) and changed where the change touches them."""

    def __init__(self, previous: ActiveConfig | None, change: ConfigChange,
                 endpoint_sessions: Counter[Endpoint], health: EndpointHealth,
                 passwords: PasswordVerifier, keysets: KeySets | None = None,
                 external: ExternalAuthClient | None = None) -> None:
        self._previous, self._change = previous, change
        self._endpoint_sessions, self._health, self._passwords = \
            endpoint_sessions, health, passwords
        self._keysets, self._external = keysets, external
        self.version = change.version
        self.applied_at = 0.0
        # What changed, for the review of live sessions: every route (when any route
        # changed, a session may now match another) or these consumers.
        self.routes_changed = True
        self.consumers_changed: set[str] = set()
        # The items of the config before that this one set or removed: what that one
        # holds alone (everything else the two share), for its release.
        self._replaced: list[tuple[str, str]] = []

    def build(self) -> Iterator[None]:
        """Build the indexes; yields between slices of work (a full config of ten
        thousand consumers is built a slice at a time). Raises ConfigMismatch.

        A whole config sent to a proxy that runs one already (an operator restarted, a
        delta missed) is applied as what it changes from the running one: items of
        the same digest are kept as they are, so routes, balancers and live sessions
        are touched only where something differs."""
        previous, change = self._previous, self._change
        if previous is None:
            if not change.full:
                raise ConfigMismatch(f"a change from {change.base} to {change.version}, and "
                                     "no config is active: send the whole config")
            self.items: dict[str, dict[str, Item]] = {k: {} for k in ITEM_MODELS}
            self.digests: dict[tuple[str, str], int] = {}
            self.digest_sum = 0
            self.authenticator = Authenticator((), self._passwords, self._keysets,
                                               self._external)
            self.upstream_tls: dict[str, tuple[ssl.SSLContext, str]] = {}
            self.balancers: dict[str, Balancer] = {}
            removed: dict[str, set[str]] = {k: set() for k in ITEM_MODELS}
            digests = change.digests
        else:
            if not change.full and change.base != previous.version:
                raise ConfigMismatch(f"a change from {change.base}, and this proxy runs "
                                     f"{previous.version}: send the whole config")
            # Copies of ten thousand entries take a few ms each: a slice apiece.
            self.items = {kind: dict(items) for kind, items in previous.items.items()}
            yield None
            self.digests = dict(previous.digests)
            self.digest_sum = previous.digest_sum
            yield None
            self.authenticator = previous.authenticator.copy()
            yield None
            clock = SliceClock(every=64)
            self.upstream_tls = dict(previous.upstream_tls)
            self.balancers = dict(previous.balancers)
            removed, digests = change.removed, change.digests
            if change.full:  # what it changes from the running config
                removed = {kind: previous.items[kind].keys() - change.set[kind].keys()
                           for kind in ITEM_MODELS}
                digests = {}
                for item, digest in change.digests.items():
                    if previous.digests.get(item) != digest:
                        digests[item] = digest
                    if clock.due():
                        yield None
                        clock.restart()
        changed = {kind: set() for kind in ITEM_MODELS}
        for kind, key in digests:
            changed[kind].add(key)
        yield None
        # Items: the digest sum moves by what left and what came.
        for kind, keys in removed.items():
            for key in keys:
                if self.items[kind].pop(key, None) is not None:
                    self.digest_sum -= self.digests.pop((kind, key))
        clock = SliceClock(every=64)
        for (kind, key), digest in digests.items():
            self.digest_sum += digest - self.digests.get((kind, key), 0)
            self.digests[(kind, key)] = digest
            self.items[kind][key] = change.set[kind][key]
            if clock.due():
                yield None
                clock.restart()
        if version_of(self.digest_sum) != change.version:
            raise ConfigMismatch(f"the change does not lead to version {change.version} "
                                 f"(it leads to {version_of(self.digest_sum)}): send the "
                                 "whole config")
        yield None
        # Consumers.
        clock = SliceClock()
        for key in removed["consumer"]:
            self.authenticator.remove(key)
        consumers = self.items["consumer"]
        for key in changed["consumer"]:
            self.authenticator.add(consumers[key])  # type: ignore[arg-type]
            if clock.due():
                yield None
                clock.restart()
        self.consumers_changed = removed["consumer"] | changed["consumer"]
        # Routes: the router again when any changed (their order decides contested paths);
        # a route's balancer and upstream TLS when it or its endpoints changed.
        routes = self.items["route"]
        changed_routes = removed["route"] | changed["route"]
        self.routes_changed = bool(changed_routes) or previous is None
        if self.routes_changed:  # both a slice at a time: 10,000 routes take 20-30 ms
            router = Router()
            clock = SliceClock(every=16)
            yield from router.adding((routes[k] for k in sorted(routes)), clock)
            self.router = router
            providers: list[JwtProvider] = []
            for route in routes.values():
                providers += route.auth.jwt.providers
                if clock.due():
                    yield None
                    clock.restart()
            self.providers = tuple(providers)
        else:
            self.router, self.providers = previous.router, previous.providers
        self.endpoints = {key: e.endpoints for key, e in self.items["endpoints"].items()}
        changed_endpoints = removed["endpoints"] | changed["endpoints"]
        if changed_endpoints:
            changed_routes |= {key for key, route in routes.items()
                               if route.endpoints_key in changed_endpoints}
        old = previous.balancers if previous is not None else {}
        clock = SliceClock()
        for key in changed_routes:
            if clock.due():
                yield None
                clock.restart()
            self.upstream_tls.pop(key, None)
            self.balancers.pop(key, None)
            route = routes.get(key)
            if route is None:
                continue
            if route.backend.tls is not None:
                self.upstream_tls[key] = (upstream_context(route.backend.tls.ca_pem),
                                          route.backend.tls.server_name)
            self.balancers[key] = balancer_for(
                route, self.endpoints.get(route.endpoints_key, ()), old.get(key),
                self._endpoint_sessions, self._health)
        self.certificates_changed = bool(removed["certificate"] or changed["certificate"])
        if previous is not None:
            self._replaced = [(kind, key) for kind, keys in removed.items() for key in keys]
            self._replaced += digests.keys()
        self.applied_at = time.time()
        del self._previous, self._change

    def take_replaced(self) -> list[tuple[str, str]]:
        """The items this config set or removed in the one it was built from, once (the
        list is not kept with the live config)."""
        replaced, self._replaced = self._replaced, []
        return replaced

    def release(self, replaced: list[tuple[str, str]]) -> Iterator[None]:
        """Let go of this (replaced, unused) config's own objects a slice at a time:
        the items the change that replaced it set or removed (``replaced``), which
        nothing else holds, so popping one frees it there and then (ten thousand
        consumers take 15 ms to free). Everything else it shares with the config that
        replaced it: its indexes then go at once with the last reference, freeing no
        item. A consumer's credentials first, so that popping the item frees it."""
        self.__dict__.pop("config", None)
        self.__dict__.pop("by_digest", None)
        clock = SliceClock(every=8)
        for kind, key in replaced:
            if kind == "consumer":
                self.authenticator.remove(key)
            self.items[kind].pop(key, None)
            self.digests.pop((kind, key), None)
            if clock.due():
                yield None
                clock.restart()

    @property
    def routes(self) -> dict[str, Route]:
        """The routes by key."""
        return self.items["route"]  # type: ignore[return-value]

    @functools.cached_property
    def by_digest(self) -> dict[int, tuple[str, str]]:
        """Items by digest (built when a whole config arrives, to reuse what it repeats;
        ``indexing`` builds it a slice at a time)."""
        return {digest: item for item, digest in self.digests.items()}

    def indexing(self) -> Iterator[None]:
        """Build ``by_digest``, yielding between slices: at 50,000 items it takes 8 ms."""
        if "by_digest" in self.__dict__:
            return
        index: dict[int, tuple[str, str]] = {}
        clock = SliceClock(every=256)
        for item, digest in list(self.digests.items()):
            index[digest] = item
            if clock.due():
                yield None
                clock.restart()
        self.__dict__["by_digest"] = index

    def known(self, kind: str, digest: int) -> Item | None:
        """The item of ``kind`` with this digest, if this config has it."""
        found = self.by_digest.get(digest)
        return self.items[kind].get(found[1]) if found is not None and found[0] == kind \
            else None

    @functools.cached_property
    def config(self) -> GatewayConfig:
        """The whole config, in canonical order (for GET /config and the saved state)."""
        return GatewayConfig.model_construct(version=self.version, **{
            field: tuple(self.items[kind][k] for k in sorted(self.items[kind]))
            for kind, field in ITEM_FIELDS.items()})


# A change that brings this many items parsed anew is built with full collections held
# off, and what it built is frozen after the swap.
MANY_NEW_ITEMS = 1000
# The oldest generation's threshold while they are held off: never reached.
NEVER = 1 << 30


class Collections:
    """Keeps CPython's full (generation 2) collections off the objects of large configs.

    A full collection walks every tracked object of the process while the loop waits:
    with a config of ten thousand consumers (about 110,000 objects) that is 70 ms on an
    idle core, and hundreds on a busy one. So while a large config is built (its
    objects pile up and would set one off) full collections are held off, and after
    the swap everything alive is frozen (``gc.freeze``: out of the collector's sight;
    objects of the config it replaced are still freed by reference counting, as
    configs hold no cycles). Freezing also freezes what live sessions hold at that
    moment: their cyclic garbage, once they end, is never collected. That costs a few
    KiB per session live at a large whole config with new content, rare after start
    (a whole config that repeats what runs reuses its items: config_stream.parse).
    """

    def __init__(self) -> None:
        self._holding = 0
        self._saved = gc.get_threshold()

    @contextlib.contextmanager
    def held_off(self) -> Iterator[None]:
        """No full collection inside (nested uses count)."""
        if self._holding == 0:
            self._saved = gc.get_threshold()
            gc.set_threshold(self._saved[0], self._saved[1], NEVER)
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if self._holding == 0:
                gc.set_threshold(*self._saved)

    @staticmethod
    def swapped(large: bool) -> None:
        """A config was swapped in: freeze what is alive when it built many objects."""
        if large:
            gc.freeze()


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
        self._collections = Collections()
        self._released: set[asyncio.Task[None]] = set()  # replaced configs being let go
        # Why the config source's last read was refused (standalone's manifest errors).
        self.source_errors: list[str] = []
        # Counts already added to the Prometheus counters, per session.
        self._flushed: dict[Session, tuple[int, int, int, int]] = {}
        # Sessions whose route has an idle timeout:
        # session -> (timeout, bytes moved when last looked at, since when unchanged).
        self._idle_watch: dict[Session, tuple[float, int, float]] = {}
        # Live sessions still to hold against the active config, and who does it.
        self._due: set[Session] = set()
        self._reviewer: asyncio.Task[None] | None = None

    @property
    def version(self) -> str | None:
        return self.active.version if self.active else None

    def report_source(self, errors: list[str]) -> None:
        self.source_errors = list(errors)

    def known_item(self, kind: str, digest: int) -> Item | None:
        """An item the active config has (config_stream.Known)."""
        return self.active.known(kind, digest) if self.active is not None else None

    def apply(self, config: GatewayConfig) -> bool:
        """Swap in a whole config at once; False when it is the version already active."""
        if self.active is not None and self.active.version == config.version:
            return False
        change = config_stream.from_items(config.version, config.items())
        active = self._prepare(change)
        with self._collections.held_off():
            for _ in active.build():
                pass
            self._swap(active, change.count() >= MANY_NEW_ITEMS or self.active is None)
        return True

    async def apply_stream(self, body: bytes) -> bool:
        """Parse a config stream (config_stream.py) and swap it in, a slice at a time,
        with full collections held off meanwhile (a whole config's new objects would
        set one off). Raises StreamError, ConfigMismatch."""
        with self._collections.held_off():
            _version, base, _start = config_stream.header(body)
            if base is None and self.active is not None:  # its items are looked up
                for _ in self.active.indexing():
                    await asyncio.sleep(0)
            return await self.apply_change(await config_stream.read(body, self.known_item))

    async def apply_change(self, change: ConfigChange) -> bool:
        """Swap in a change (a delta, or a whole config) built a slice at a time: the
        loop serves sessions between slices, and handshakes see the old config until
        the one swap. False when it is the version already active. Raises
        ConfigMismatch."""
        if self.active is not None and self.active.version == change.version:
            return False
        active = self._prepare(change)
        with self._collections.held_off():
            for _ in active.build():
                await asyncio.sleep(0)
            if self.active is not None and self.active.version == change.version:
                return False  # another push got there first
            if self.active is not None and not change.full \
                    and self.active.version != change.base:
                raise ConfigMismatch(f"this proxy moved to {self.active.version} meanwhile")
            self._swap(active, change.fresh >= MANY_NEW_ITEMS or self.active is None)
        return True

    def _prepare(self, change: ConfigChange) -> ActiveConfig:
        return ActiveConfig(self.active, change, self.endpoint_sessions, self.health,
                            self.passwords, self.keysets, self.external)

    def _swap(self, active: ActiveConfig, large: bool) -> None:
        previous = self.active
        self.active = active
        self._collections.swapped(large)
        if active.routes_changed:
            self.keysets.sync(active.providers)
        if active.certificates_changed:
            self.certificates.update(tuple(active.items["certificate"][k]
                                           for k in sorted(active.items["certificate"])))
        if previous is not None:
            metrics.CONFIG_INFO.remove(previous.version)
        metrics.CONFIG_INFO.labels(active.version).set(1)
        metrics.CONFIG_APPLIED.set(active.applied_at)
        self._review_sessions(active)
        self.forget_removed_routes()
        previous_version = previous.version if previous is not None else None
        if previous is not None:
            self._release(previous, active.take_replaced())
            previous = None
        log.info(
            "config applied",
            extra={
                "version": active.version,
                "previous": previous_version,
                "routes": len(active.items["route"]),
                "consumers": len(active.items["consumer"]),
                "sessions_to_review": len(self._due),
            },
        )

    def _release(self, config: ActiveConfig, replaced: list[tuple[str, str]]) -> None:
        try:
            release = asyncio.get_running_loop().create_task(_release(config, replaced))
        except RuntimeError:  # no loop (a script applying configs): all at once
            return
        self._released.add(release)
        release.add_done_callback(self._released.discard)

    async def released(self) -> None:
        """Wait until the configs replaced so far have been let go."""
        await asyncio.gather(*self._released)

    def _review_sessions(self, active: ActiveConfig) -> None:
        """Hold the live sessions a new config may affect against it (every session when
        routes changed, else those of the consumers that changed) and close those it no
        longer allows: a slice at a time on the loop, since 50,000 sessions take a
        quarter of a second; each is held against the config active when its turn comes.

        A session keeps running when its handshake would still reach the same route and
        its consumer still holds the credential it authenticated with and is still
        allowed there; everything else about the config may change around it.
        """
        if active.routes_changed:
            self._due.update(self.sessions)
        elif changed := active.consumers_changed:
            self._due.update(s for s in self.sessions if s.consumer_key in changed)
        if not self._due or self._reviewer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script applying configs): all at once
            self._review_due(None)
            return
        self._reviewer = loop.create_task(self._review_in_slices())

    async def _review_in_slices(self) -> None:
        reviewed = closed = 0
        try:
            while self._due:
                due = len(self._due)
                closed += self._review_due(SliceClock(every=64))
                reviewed += due - len(self._due)
                if self._due:
                    await asyncio.sleep(0)
        finally:
            self._reviewer = None
        log.info("sessions reviewed", extra={
            "version": self.version, "reviewed": reviewed, "closed": closed})

    def _review_due(self, clock: SliceClock | None) -> int:
        """Review due sessions until the slice is due (all of them without a clock);
        how many were closed."""
        closed = 0
        active, due = self.active, self._due
        assert active is not None
        while due:
            closed += self._review(active, due.pop())
            if clock is not None and clock.due():
                break
        return closed

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
        # The session keeps what it needs of its handshake, not the config it was
        # served from: one live session per config version would keep every version.
        session.handshake = session.handshake.settled()
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
        self._due.discard(session)
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
        log_session(access_log, session_record(session))

    async def flush_counters(self) -> None:
        """Add what live sessions relayed since the last flush to the counters, a slice
        at a time: with tens of thousands of sessions one pass would hold the loop."""
        clock = SliceClock(every=64)
        for session in list(self.sessions):
            if session in self._flushed:  # not ended meanwhile
                self._flush(session)
            if clock.due():
                await clock.pause()

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
        live = self.active.items["route"]
        metrics.forget_routes(key for key in metrics.routes()
                              if key and key not in live and not self.limits.counted(key))

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

    async def close(self) -> None:
        """Stop what runs in the background: session reviews, rechecks, key refreshes,
        outbound connections."""
        if self._reviewer is not None:
            self._reviewer.cancel()
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
            "routes": [route_summary(r, self.active.endpoints.get(r.endpoints_key, ()))
                       for r in config.routes],
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


# How long a replaced config may stay in use (a handshake under way) before it is let
# go at once instead of a slice at a time.
RELEASE_WAIT_SECONDS = 30.0


async def _release(config: ActiveConfig, replaced: list[tuple[str, str]]) -> None:
    """Let go of a replaced config a slice at a time (ActiveConfig.release), once
    nothing else uses it (the handshakes served from it have ended: live sessions do
    not keep it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELEASE_WAIT_SECONDS
    # Referenced here and by getrefcount's argument: nothing else holds it.
    while sys.getrefcount(config) > 2:
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.05)
    for _ in config.release(replaced):
        await asyncio.sleep(0)


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


def route_summary(route: Route, endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    return {
        "name": route.key,
        "generation": route.generation,
        "hosts": list(route.hosts),
        "paths": [f"{p.type} {p.value}" for p in route.paths],
        "backend": route.backend.service,
        "endpoints": [str(e) for e in endpoints],
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
