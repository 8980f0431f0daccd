"""Connection counts shared by every proxy: leases in Redis.

Each live session on a limited route holds a *lease*: a member ``<proxy id>/<n>`` of one
sorted set per limit it counts against (the route's, the route's for its consumer, the
consumer's). The lease's deadline is its proxy's: every proxy keeps a heartbeat, its
deadline in Redis's own clock (no proxy clock is trusted), in a per-namespace set
``wsgate:{ns}:proxies``. A count is the number of members whose proxy is alive.

- Admission is one round trip: a Lua script counts each counter (only a counter at its
  limit needs the per-proxy count of members of live proxies) and either refuses (naming
  the first counter at its limit) or adds the member to every counter, atomically.
  Members of dead proxies are never counted, and are removed when a script finds them.
  The admissions of one event-loop turn share a round trip.
- Renewal is one round trip per proxy per interval: one heartbeat per namespace the
  proxy holds leases in, whatever the number of sessions, so a session open for a week
  keeps counting at no cost per session. A proxy killed with SIGKILL stops renewing,
  and its sessions stop counting when its deadline (the lease time) passes.
- A session's end removes its member at once: with the next admission's round trip, or
  within 5 ms, batched.
- When the store may disagree with what this proxy holds (a call that failed or timed
  out, releases that could not be sent, a Redis that came back empty and so reports
  this proxy's heartbeat missing), the counters concerned are *resynced*: this proxy's
  members in them replaced by exactly those it holds. After an empty restart that makes
  the counts right again within one renewal interval.
- Keys carry the namespace as a hash tag (``wsgate:{ns}:...``): every key a handshake
  touches lives in one Redis Cluster slot, so one script can check them all. Keys never
  include a config version: editing a route keeps its counts.

When Redis fails (refused, slower than the timeout, a reply that makes no sense) the
store says so once (a log line, a metric), answers ``StoreUnavailable`` at once to every
admission without trying Redis, and tries again every second; the caller decides what an
unavailable store means (``--limits-redis-failure open|closed``). Sessions are never
closed because of the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from . import metrics

log = logging.getLogger("wsgate.limits")

FailureMode = Literal["open", "closed"]

# How often a store found unavailable is tried again (at most: the renewal interval).
RETRY_SECONDS = 1.0
# How long a release waits for others (or for an admission to ride along with).
RELEASE_WINDOW_SECONDS = 0.005
# Members per resync script call: each call holds Redis for about a millisecond.
SYNC_CHUNK = 2000
# At most this much resync per round trip.
SEND_BYTES = 256 * 1024
# A counter no proxy touches for this long goes away (its leases are long dead). Live
# proxies refresh the counters they hold at least every REFRESH_SECONDS.
COUNTER_TTL_MS = 24 * 3600 * 1000
REFRESH_SECONDS = 3600.0
REFRESHES_PER_RENEWAL = 500  # the rest wait for the next renewal

_ERRORS = (RedisError, OSError, TimeoutError, ValueError, TypeError, IndexError)
_ADMIT_SECONDS = metrics.LIMITS_STORE_SECONDS.labels("admit")
_RENEW_SECONDS = metrics.LIMITS_STORE_SECONDS.labels("renew")

# Redis's clock in ms; `heartbeat`: renew this proxy's in a namespace (KEYS[1]), drop
# dead ones; the live ids and whether this one was missing (the store lost it, or found
# it dead); `count`: a counter's members of live proxies, after removing any other
# member. Proxy ids are fixed-length lowercase hex, so a proxy's members are the lexical
# range [id/, id0) and sorted ids give sorted, disjoint ranges.
# replicate_commands makes a script that reads TIME and then writes replicate by its
# effects on Redis < 7 (7 always does).
_COMMON = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function expire_with_last(proxies)
  local last = redis.call('ZRANGE', proxies, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', proxies, math.ceil(tonumber(last[2])) + 1) end
end

-- renew this proxy's heartbeat, drop dead ones; the live ids
local function heartbeat(proxies, id, lease_ms)
  redis.call('ZREMRANGEBYSCORE', proxies, '-inf', '(' .. now)
  local missing = redis.call('ZADD', proxies, now + lease_ms, id)
  expire_with_last(proxies)
  return redis.call('ZRANGE', proxies, 0, -1), missing
end

local function count(key, alive)
  local n = 0
  for _, id in ipairs(alive) do
    n = n + redis.call('ZLEXCOUNT', key, '[' .. id .. '/', '(' .. id .. '0')
  end
  if redis.call('ZCARD', key) > n then
    -- members of dead proxies: remove everything outside the live proxies' ranges
    local sorted = {unpack(alive)}
    table.sort(sorted)
    local low = '-'
    for _, id in ipairs(sorted) do
      redis.call('ZREMRANGEBYLEX', key, low, '(' .. id .. '/')
      low = '[' .. id .. '0'
    end
    redis.call('ZREMRANGEBYLEX', key, low, '+')
  end
  return n
end
"""

# KEYS[1]: the namespace's proxies; KEYS[2..]: counters. ARGV: proxy id, lease ms, counter
# ttl ms, the member, then each counter's limit. Returns {0, 0, missing} when admitted
# (the member added to every counter), or {i, n, missing}: counter i (from 1) holds n
# leases of live proxies, at or over its limit; nothing added. `missing`: this proxy's
# heartbeat was not there (it is now); an admission does not otherwise renew it.
ADMIT = _COMMON + """
local missing = 0
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not mine or tonumber(mine) < now then
  missing = 1
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  expire_with_last(KEYS[1])
end
local sizes, alive = {}, nil
for i = 2, #KEYS do
  local limit = tonumber(ARGV[3 + i])
  sizes[i] = redis.call('ZCARD', KEYS[i])
  -- Under its limit counting every member, a counter is under it counting live ones:
  -- only a counter at its limit needs the live proxies (and loses its dead members).
  if sizes[i] >= limit then
    alive = alive or redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
    local n = count(KEYS[i], alive)
    if n >= limit then return {i - 1, n, missing} end
    sizes[i] = 0
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 0, ARGV[4])
  if sizes[i] == 0 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return {0, 0, missing}
"""

# KEYS[1]: the namespace's proxies; KEYS[2..]: counters to resync or refresh. ARGV: proxy
# id, lease ms, counter ttl ms, then per counter either '=' (only refresh its expiry) or
# this proxy's members in it, newline-separated (one argument per counter: the proxy
# packs and Redis parses a few strings instead of many). A resynced counter holds
# exactly these members of this proxy afterwards. Returns {missing, members added}.
RENEW = _COMMON + """
local alive, missing = heartbeat(KEYS[1], ARGV[1], tonumber(ARGV[2]))
local added = 0
for i = 2, #KEYS do
  local key, members = KEYS[i], ARGV[2 + i]
  if members ~= '=' then
    redis.call('ZREMRANGEBYLEX', key, '[' .. ARGV[1] .. '/', '(' .. ARGV[1] .. '0')
    local batch = {}
    for member in string.gmatch(members, '[^\\n]+') do
      batch[#batch + 1] = 0
      batch[#batch + 1] = member
      if #batch == 1000 then
        added = added + redis.call('ZADD', key, unpack(batch))
        batch = {}
      end
    end
    if #batch > 0 then added = added + redis.call('ZADD', key, unpack(batch)) end
  end
  count(key, alive)  -- drops dead proxies' members
  redis.call('PEXPIRE', key, ARGV[3])
end
return {missing, added}
"""


ADMIT_SHA = hashlib.sha1(ADMIT.encode()).hexdigest()
RENEW_SHA = hashlib.sha1(RENEW.encode()).hexdigest()


def _key(namespace: str, *parts: str) -> str:
    # The namespace (a DNS label: never '{' or '}') is the hash tag; the names after it
    # cannot contain ':' except the last, so keys never collide.
    return f"wsgate:{{{namespace}}}:" + ":".join(parts)


def proxies_key(namespace: str) -> str:
    return _key(namespace, "proxies")


CounterKind = Literal["route", "route-consumer", "consumer"]


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit's count in the store: its key, and how many leases it may hold."""

    namespace: str
    key: str
    limit: int
    kind: CounterKind

    @classmethod
    def route(cls, namespace: str, route: str, limit: int) -> Counter:
        return cls(namespace, _key(namespace, "route", route), limit, "route")

    @classmethod
    def route_consumer(cls, namespace: str, route: str, consumer: str, limit: int) -> Counter:
        return cls(namespace, _key(namespace, "route-consumer", route, consumer), limit,
                   "route-consumer")

    @classmethod
    def consumer(cls, namespace: str, consumer: str, limit: int) -> Counter:
        return cls(namespace, _key(namespace, "consumer", consumer), limit, "consumer")


@dataclass(eq=False, slots=True)
class Lease:
    """A session's place in its counters (all of one namespace)."""

    member: bytes
    counters: tuple[Counter, ...]


class Full(Exception):
    """A counter is at its limit: ``count`` live leases, fleet-wide."""

    def __init__(self, counter: Counter, count: int) -> None:
        super().__init__(f"{counter.key} holds {count} of {counter.limit}")
        self.counter = counter
        self.count = count


class StoreUnavailable(Exception):
    """The store cannot answer now. The caller either ``hold()``s the lease (admitted
    without the store; registered once it is back) or lets it go."""

    def __init__(self, lease: Lease) -> None:
        super().__init__("the limits store is unavailable")
        self.lease = lease


@dataclass(frozen=True)
class StoreOptions:
    url: str  # redis://[user[:password]@]host[:port][/db] or rediss://...
    password: str | None = None  # overrides the URL's
    failure: FailureMode = "open"
    lease_seconds: float = 30.0
    renew_seconds: float = 10.0
    # The bound on one admission's round trip: a handshake never waits longer on Redis.
    timeout_seconds: float = 0.25

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://")):
            raise ValueError("--limits-redis-url must be redis://HOST:PORT/DB or "
                             "rediss://HOST:PORT/DB")
        if self.renew_seconds <= 0 or self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"--limits-renew-seconds ({self.renew_seconds}) must be positive and at most "
                f"half of --limits-lease-seconds ({self.lease_seconds}), so that a lease "
                "survives one failed renewal")
        if self.timeout_seconds <= 0:
            raise ValueError("--limits-redis-timeout must be positive")

    @property
    def location(self) -> str:
        """scheme://host:port/db of the URL, without credentials or options (for logs)."""
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2].partition('?')[0]}"


def read_password(path: Path) -> str:
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --limits-redis-password-file {path}: "
                         f"{exc.strerror}") from None
    if not password:
        raise ValueError(f"--limits-redis-password-file {path} is empty")
    return password


@dataclass(slots=True)
class _Admission:
    lease: Lease
    keys: list[str]
    args: list[Any]
    reply: asyncio.Future[Any]


@dataclass
class _Outage:
    since: float
    error: str


class LeaseStore:
    def __init__(self, options: StoreOptions) -> None:
        self.options = options
        self.failure: FailureMode = options.failure
        self._lease_ms = str(round(options.lease_seconds * 1000))
        self._redis = _Connections(options)
        # Fixed-length hex (see _COMMON), random: a restarted pod never takes over its
        # predecessor's leases. The log line at start ties it to the host (the pod).
        self.proxy_id = secrets.token_hex(8)
        self._ids = itertools.count(1)
        self._held: dict[bytes, Lease] = {}
        # Per counter key: the members this proxy holds (kept as sessions come and go, so
        # a resync only joins strings) and the namespace.
        self._members: dict[str, dict[bytes, None]] = {}
        self._namespaces: dict[str, str] = {}
        # Counters where the store may disagree with _members: resynced at the next
        # renewal (key -> namespace; the key may no longer be held).
        self._dirty: dict[str, str] = {}
        # Counters in a resync in flight, and those changed meanwhile (resynced again).
        self._syncing: set[str] = set()
        self._changed_while_syncing: dict[str, str] = {}
        self._queued: list[_Admission] = []  # admissions of this turn, not sent yet
        self._sending: set[asyncio.Task[None]] = set()
        self._releases: dict[str, list[bytes]] = {}  # key -> members, sent this turn
        self._release_namespaces: dict[str, str] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._renewing = asyncio.Lock()
        self._soon: asyncio.Task[None] | None = None
        self._refreshed_at: dict[str, float] = {}  # counter -> when its expiry was renewed
        self._heartbeats: set[str] = set()  # namespaces where this proxy has one
        self._outage: _Outage | None = None
        self.renewals = 0  # successful ones
        log.info("limits store", extra={"store": options.location, "proxy_id": self.proxy_id,
                                        "host": socket.gethostname(),
                                        "failure_mode": options.failure,
                                        "lease_seconds": options.lease_seconds,
                                        "renew_seconds": options.renew_seconds})

    @property
    def up(self) -> bool:
        return self._outage is None

    @property
    def held(self) -> int:
        return len(self._held)

    # -- admission -------------------------------------------------------------------
    async def admit(self, counters: Sequence[Counter]) -> Lease:
        """Add a lease to every counter (all of one namespace), or raise Full (the first
        counter at its limit) or StoreUnavailable. One round trip, bounded by the
        timeout."""
        namespace = counters[0].namespace
        assert all(c.namespace == namespace for c in counters)
        lease = Lease(f"{self.proxy_id}/{next(self._ids)}".encode(), tuple(counters))
        if self._outage is not None:
            raise StoreUnavailable(lease)
        keys = [proxies_key(namespace), *(c.key for c in counters)]
        args = [self.proxy_id, self._lease_ms, COUNTER_TTL_MS, lease.member,
                *(c.limit for c in counters)]
        call = _Admission(lease, keys, args, asyncio.get_running_loop().create_future())
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._send_queued)
        self._queued.append(call)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                reply = await call.reply
            index, count, missing = int(reply[0]), int(reply[1]), int(reply[2])
            if not 0 <= index <= len(counters):
                raise ValueError(f"unexpected reply {reply!r}")
        except _ERRORS as exc:
            # It may or may not have been added: resync these counters once possible.
            self._mark_dirty(counters)
            self._down(exc)
            raise StoreUnavailable(lease) from None
        finally:
            self._note_change(counters)
        _ADMIT_SECONDS.observe(time.perf_counter() - started)
        self._heartbeats.add(namespace)
        if missing:
            # This proxy's heartbeat was gone (Redis restarted empty, or found this proxy
            # dead): its other sessions are not counted until they are registered again.
            self._dirty.update({key: namespace for key in self._keys_of(namespace)})
            self.renew_soon()
        if index:
            raise Full(counters[index - 1], count)
        self._keep(lease)
        return lease

    def _send_queued(self) -> None:
        """Send the admissions of this event-loop turn in one round trip (several batches
        may be in flight at once, each on its own connection)."""
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send_admissions(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_admissions(self, batch: list[_Admission]) -> None:
        # Releases waiting to be sent ride along: one round trip for both.
        releases, namespaces = self._take_releases()
        try:
            async with asyncio.timeout(self.options.timeout_seconds * 4):
                replies = await self._redis.roundtrip(releases + _admit_commands(batch))
                self._released(namespaces, replies[:len(releases)])
                replies = replies[len(releases):]
                if any(isinstance(r, NoScriptError) for r in replies):
                    # Redis lost its script cache (a restart): load it, send those again.
                    await self._redis.roundtrip([("SCRIPT", "LOAD", ADMIT)])
                    again = [c for c, r in zip(batch, replies, strict=True)
                             if isinstance(r, NoScriptError)]
                    resent = iter(await self._redis.roundtrip(_admit_commands(again)))
                    replies = [next(resent) if isinstance(r, NoScriptError) else r
                               for r in replies]
        except BaseException as exc:
            self._dirty.update(namespaces)
            for call in batch:
                self._mark_dirty(call.lease.counters)
                if not call.reply.done():
                    call.reply.set_exception(exc if isinstance(exc, Exception)
                                             else ConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for call, reply in zip(batch, replies, strict=True):
            if not call.reply.done():
                if isinstance(reply, Exception):
                    call.reply.set_exception(reply)
                else:
                    call.reply.set_result(reply)
            elif isinstance(reply, list) and reply and reply[0] == 0:
                # Admitted after its handshake stopped waiting (timed out, or gone): give
                # the place back.
                self._remove(call.lease)

    def hold(self, lease: Lease) -> None:
        """Keep a lease admitted without the store: registered at the next renewal that
        reaches it, and counted from then on."""
        self._keep(lease)
        self._mark_dirty(lease.counters)

    def _keep(self, lease: Lease) -> None:
        self._held[lease.member] = lease
        now = time.monotonic()
        for counter in lease.counters:
            self._members.setdefault(counter.key, {})[lease.member] = None
            self._namespaces[counter.key] = counter.namespace
            # A counter gets its expiry when it is created; held, it is refreshed hourly.
            self._refreshed_at.setdefault(counter.key, now)
        metrics.LIMITS_STORE_LEASES.set(len(self._held))

    def release(self, lease: Lease) -> None:
        """The session ended: remove its lease from Redis soon (batched), without waiting."""
        if self._held.pop(lease.member, None) is None:
            return
        for counter in lease.counters:
            members = self._members[counter.key]
            del members[lease.member]
            if not members:
                del self._members[counter.key], self._namespaces[counter.key]
                self._refreshed_at.pop(counter.key, None)
        metrics.LIMITS_STORE_LEASES.set(len(self._held))
        self._remove(lease)

    def _remove(self, lease: Lease) -> None:
        """Remove a lease's member from Redis (batched per event-loop turn)."""
        self._note_change(lease.counters)
        if self._outage is not None:
            self._mark_dirty(lease.counters)
            return
        for counter in lease.counters:
            self._releases.setdefault(counter.key, []).append(lease.member)
            self._release_namespaces[counter.key] = counter.namespace
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Send the releases not yet sent along with an admission, a moment after the
        first (so that a burst of session ends makes one round trip)."""
        await asyncio.sleep(RELEASE_WINDOW_SECONDS)
        while self._releases:
            commands, namespaces = self._take_releases()
            if self._outage is not None:
                self._dirty.update(namespaces)
                return
            try:
                async with asyncio.timeout(self.options.timeout_seconds * 4):
                    replies = await self._redis.roundtrip(commands)
                self._released(namespaces, replies)
            except _ERRORS as exc:
                self._dirty.update(namespaces)
                self._down(exc)

    def _take_releases(self) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
        batch, self._releases = self._releases, {}
        namespaces, self._release_namespaces = self._release_namespaces, {}
        return [("ZREM", key, *members) for key, members in batch.items()], namespaces

    def _released(self, namespaces: dict[str, str], replies: list[Any]) -> None:
        _raise_first_error(replies)
        for key, namespace in namespaces.items():
            if key in self._syncing:
                self._changed_while_syncing[key] = namespace

    def _mark_dirty(self, counters: Iterable[Counter]) -> None:
        for counter in counters:
            self._dirty[counter.key] = counter.namespace

    def _note_change(self, counters: Iterable[Counter]) -> None:
        for counter in counters:
            if counter.key in self._syncing:
                self._changed_while_syncing[counter.key] = counter.namespace

    def _keys_of(self, namespace: str) -> list[str]:
        return [key for key, ns in self._namespaces.items() if ns == namespace]

    # -- renewal ---------------------------------------------------------------------
    async def run(self) -> None:
        """Check the store at once, then renew every interval (every second while the
        store is down), until cancelled."""
        while True:
            await self.renew()
            interval = self.options.renew_seconds
            await asyncio.sleep(interval if self._outage is None
                                else min(interval, RETRY_SECONDS))

    def renew_soon(self) -> None:
        if self._soon is None or self._soon.done():
            self._soon = asyncio.get_running_loop().create_task(self.renew())

    async def renew(self) -> None:
        """Heartbeats (and resyncs of what may disagree): one round trip, or two when the
        store turns out to have lost this proxy."""
        async with self._renewing:
            started = time.perf_counter()
            try:
                added, missing = await self._renew_once()
                if missing:
                    # Redis came back empty (or found this proxy dead): register every
                    # lease of those namespaces again, now.
                    self._dirty.update({k: ns for k, ns in self._namespaces.items()
                                        if ns in missing})
                    more, _ = await self._renew_once()
                    added += more
            except _ERRORS as exc:
                self._down(exc)
                return
            _RENEW_SECONDS.observe(time.perf_counter() - started)
            if added:
                metrics.LIMITS_STORE_REREGISTERED.inc(added)
            self.renewals += 1
            self._up(added)

    async def _renew_once(self) -> tuple[int, set[str]]:
        """Per namespace, the heartbeat with the resyncs and expiry refreshes due, in one
        round trip (unless a resync is large). Returns the members added and the
        namespaces where this proxy was missing."""
        dirty, self._dirty = self._dirty, {}
        self._syncing = set(dirty)
        try:
            calls = await self._renewal_calls(dirty)
            replies = await self._send(calls)
            if any(isinstance(r, NoScriptError) for r in replies):
                # Redis lost its script cache (a restart): load it, then once more.
                await self._bounded([("SCRIPT", "LOAD", RENEW)])
                replies = await self._send(calls)
            _raise_first_error(replies)
            added, missing = 0, set()
            for (namespace, _, _), reply in zip(calls, replies, strict=True):
                if int(reply[0]):
                    missing.add(namespace)
                added += int(reply[1])
        except BaseException:
            self._dirty.update(dirty)  # still to do
            raise
        finally:
            self._syncing = set()
            self._dirty.update(self._changed_while_syncing)
            self._changed_while_syncing = {}
        now = time.monotonic()
        for namespace, keys, _ in calls:
            self._heartbeats.add(namespace)
            for key in keys[1:]:
                self._refreshed_at[key] = now
        return added, missing

    async def _send(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """The calls in one round trip; a large resync in several of at most SEND_BYTES,
        so that packing them never holds the event loop long."""
        replies: list[Any] = []
        group: list[tuple[Any, ...]] = []
        size = 0
        for _, keys, args in calls:
            weight = sum(len(a) for a in args if isinstance(a, bytes))
            if group and size + weight > SEND_BYTES:
                replies += await self._bounded(group)
                group, size = [], 0
            group.append(("EVALSHA", RENEW_SHA, len(keys), *keys, *args))
            size += weight
        return replies + await self._bounded(group)

    async def _bounded(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        # A renewal's round trip may carry a resync: it may take longer than an admission.
        async with asyncio.timeout(max(self.options.timeout_seconds * 4, 1.0)):
            return await self._redis.roundtrip(commands)

    async def _renewal_calls(self, dirty: dict[str, str]
                             ) -> list[tuple[str, list[str], list[Any]]]:
        """(namespace, keys, args) of each RENEW call: one per namespace this proxy holds
        leases in or must resync, more when its resyncs exceed SYNC_CHUNK members.

        A large resync yields to the event loop between chunks; a counter changed after
        its members were read is in _syncing, so it is resynced again afterwards."""
        due = time.monotonic() - REFRESH_SECONDS
        work: dict[str, list[tuple[str, bytes | str, int]]] = defaultdict(list)
        refreshes = 0
        for key, namespace in self._namespaces.items():
            if (key not in dirty and refreshes < REFRESHES_PER_RENEWAL
                    and self._refreshed_at[key] < due):
                work[namespace].append((key, "=", 0))  # refresh its expiry only
                refreshes += 1
            else:
                work.setdefault(namespace, [])
        joined = 0
        for key, namespace in dirty.items():
            members = list(self._members.get(key, ()))
            joined += len(members)
            if joined > SYNC_CHUNK:
                joined = 0
                await asyncio.sleep(0)
            for start in range(0, max(len(members), 1), SYNC_CHUNK):
                part = members[start:start + SYNC_CHUNK]
                # An empty part still clears what the store holds of this proxy there.
                work[namespace].append((key, b"\n".join(part) or b"\n", len(part)))
        calls = []
        for namespace, items in work.items():
            keys, args, size = [proxies_key(namespace)], [], 0
            for key, members, n in items:
                if size and size + n > SYNC_CHUNK:
                    calls.append(self._call(namespace, keys, args))
                    keys, args, size = [proxies_key(namespace)], [], 0
                keys.append(key)
                args.append(members)
                size += n
            calls.append(self._call(namespace, keys, args))
        if not calls:  # nothing held: a heartbeat in no namespace, to see that it answers
            calls.append(self._call("", [proxies_key("")], []))
        return calls

    def _call(self, namespace: str, keys: list[str], args: list[Any]
              ) -> tuple[str, list[str], list[Any]]:
        return namespace, keys, [self.proxy_id, self._lease_ms, COUNTER_TTL_MS, *args]

    # -- outages ---------------------------------------------------------------------
    def _down(self, exc: BaseException) -> None:
        if self._outage is not None:
            return
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._outage = _Outage(time.monotonic(), error)
        metrics.LIMITS_STORE_UP.labels(self.options.location).set(0)
        metrics.LIMITS_STORE_OUTAGES.inc()
        log.warning("limits store unavailable", extra={
            "store": self.options.location, "error": error, "failure_mode": self.failure,
            "meanwhile": "connection limits count per proxy" if self.failure == "open"
            else "handshakes on routes with connection limits get 503"})

    def _up(self, reregistered: int) -> None:
        metrics.LIMITS_STORE_UP.labels(self.options.location).set(1)
        if self._outage is None:
            if reregistered:
                log.warning("limits store had lost leases; registered them again",
                            extra={"store": self.options.location, "leases": reregistered})
            return
        outage, self._outage = self._outage, None
        log.info("limits store available again", extra={
            "store": self.options.location,
            "outage_seconds": round(time.monotonic() - outage.since, 3),
            "leases": len(self._held), "reregistered": reregistered})

    async def close(self) -> None:
        """On stop, once the sessions have ended: send the last releases and remove this
        proxy's heartbeats (whatever it still holds stops counting at once), briefly."""
        if self._soon is not None:
            self._soon.cancel()
        if self._flushing is not None:
            await asyncio.wait([self._flushing], timeout=self.options.timeout_seconds * 4)
            self._flushing.cancel()
        if self._outage is None and self._heartbeats:
            try:
                async with asyncio.timeout(self.options.timeout_seconds * 4):
                    await self._redis.roundtrip([("ZREM", proxies_key(ns), self.proxy_id)
                                                 for ns in self._heartbeats])
            except _ERRORS:
                pass  # they expire with the lease time
        for task in list(self._sending):
            task.cancel()
        await self._redis.close()


class _Connections:
    """Connections to Redis, and the one thing done with them: send a batch of commands
    in one write and read their replies (a pipeline without redis-py's per-command
    machinery, which costs more than the round trip on a busy proxy)."""

    IDLE = 16  # connections kept open between batches; more are opened when needed

    def __init__(self, options: StoreOptions) -> None:
        kwargs: dict[str, Any] = parse_url(options.url)
        self._class = kwargs.pop("connection_class", Connection)
        if options.password:
            kwargs["password"] = options.password  # the file's, over the URL's
        # Every round trip is bounded by its caller (asyncio.timeout), so reads carry no
        # timeout of their own: one timer per read costs more than the read.
        self._kwargs = {**kwargs, "socket_timeout": None,
                        "socket_connect_timeout": options.timeout_seconds * 4,
                        "retry": Retry(NoBackoff(), 0)}
        self._idle: list[AbstractConnection] = []

    async def roundtrip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, or the error Redis answered it with (as an exception
        object). A pooled connection that turns out dead (Redis restarted) is replaced
        once; any other failure raises."""
        if not self._idle:
            return await self._on(self._new(), commands)
        try:
            return await self._on(self._idle.pop(), commands)
        except (RedisConnectionError, OSError):
            return await self._on(self._new(), commands)

    def _new(self) -> AbstractConnection:
        return self._class(**self._kwargs)

    async def _on(self, connection: AbstractConnection, commands: list[tuple[Any, ...]]
                  ) -> list[Any]:
        try:
            await connection.connect()
            await connection.send_packed_command(connection.pack_commands(commands),
                                                 check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        if len(self._idle) < self.IDLE:
            self._idle.append(connection)
        else:
            await connection.disconnect()
        return replies

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


def _admit_commands(batch: list[_Admission]) -> list[tuple[Any, ...]]:
    return [("EVALSHA", ADMIT_SHA, len(c.keys), *c.keys, *c.args) for c in batch]


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
