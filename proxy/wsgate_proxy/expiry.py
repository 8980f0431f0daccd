"""One timer structure for every live session's credential deadlines.

A session opened with a JWT ends when the token does (``exp`` plus the clock skew), one
opened through External when the auth server's answer does (its ``max-age`` or
``Expires``), and an External session is asked about again every ``recheckSeconds``.
With 50,000 sessions a task or a loop timer per session would cost memory and
scheduling for nothing: ``Deadlines`` keeps one heap of (when, sequence, owner, kind)
and one loop timer, armed for the earliest entry. Setting a deadline again (a renewed
credential) or clearing it (the session ended) leaves the old heap entry in place and
marks it stale; stale entries are skipped when they come up and dropped in one pass
once they outnumber the live ones, so the heap stays within twice the live deadlines
(plus 64, so that a few sessions do not rebuild it at every renewal).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, cast

from . import metrics
from .config import Route
from .external_auth import ExternalAuthClient
from .frames import CloseCode
from .refusals import AuthFailure, Refusal

if TYPE_CHECKING:
    from .relay import Session

log = logging.getLogger("wsgate.expiry")

# Entries due within this much of the earliest are handled in the same wake-up.
BATCH_SECONDS = 0.001
# At most this many due entries per wake-up: JWT exps are whole seconds, so the tokens
# minted together expire together; the rest wait for the next turn of the loop, so live
# sessions' frames are relayed in between.
MAX_PER_WAKEUP = 256


class Deadlines:
    """Deadlines per (owner, kind), in the event loop's clock; ``on_due(owner, kind)`` is
    called once when one passes, on the loop."""

    def __init__(self, on_due: Callable[[Hashable, str], None]) -> None:
        self._on_due = on_due
        self._heap: list[tuple[float, int, Hashable, str]] = []
        self._live: dict[tuple[Hashable, str], tuple[float, int]] = {}
        self._sequence = itertools.count()
        self._timer: asyncio.Handle | None = None
        self._armed_for: float | None = None

    def __len__(self) -> int:
        return len(self._live)

    def set(self, owner: Hashable, kind: str, when: float | None) -> None:
        """Call ``on_due(owner, kind)`` at loop time ``when`` (replacing any earlier
        deadline of that kind); None clears it."""
        if when is None:
            self._live.pop((owner, kind), None)
            self._compact()
            return
        sequence = next(self._sequence)
        self._live[(owner, kind)] = (when, sequence)
        heapq.heappush(self._heap, (when, sequence, owner, kind))
        self._compact()
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)

    def clear(self, owner: Hashable, kinds: tuple[str, ...]) -> None:
        for kind in kinds:
            self._live.pop((owner, kind), None)
        self._compact()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._armed_for = when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = self._armed_for = None
        loop = asyncio.get_running_loop()
        horizon = loop.time() + BATCH_SECONDS
        due = []
        heap = self._heap
        while heap and heap[0][0] <= horizon and len(due) < MAX_PER_WAKEUP:
            when, sequence, owner, kind = heapq.heappop(heap)
            if self._live.get((owner, kind)) == (when, sequence):
                del self._live[(owner, kind)]
                due.append((owner, kind))
        if heap and heap[0][0] <= horizon:  # more are due: after what else is waiting
            self._armed_for = heap[0][0]
            self._timer = loop.call_soon(self._fire)
        elif heap:
            self._arm(heap[0][0])
        for owner, kind in due:
            self._on_due(owner, kind)

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(when, sequence, owner, kind)
                          for (owner, kind), (when, sequence) in self._live.items()]
            heapq.heapify(self._heap)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_for = None
        self._heap.clear()
        self._live.clear()


EXPIRE, RECHECK = "expire", "recheck"
RECHECK_WORKERS = 32  # half the External client's concurrency: handshakes keep the rest
# Each recheck comes after 80-100% of recheckSeconds, at random: sessions opened in the
# same second (a reconnect storm) do not stay in step and ask the auth server at once.
RECHECK_SPREAD = 0.2
# Rechecks in a row the auth server could not answer before the session is closed (1013):
# a blip passes, but an outage cannot keep a revoked session open for as long as it lasts.
MAX_UNANSWERED_RECHECKS = 3


def loop_time(unix: float) -> float:
    """A wall-clock instant in the event loop's clock."""
    return asyncio.get_running_loop().time() + (unix - time.time())


class Lifetimes:
    """Ends sessions with their credential, and asks the auth server again about those
    opened through External.

    - ``expire``: when ``credential_valid_until`` passes, the session is closed with
      1008 ``credential expired`` if its route (as configured now) says
      ``onCredentialExpired: Close``;
    - ``recheck``: every ``recheckSeconds`` (spread out) the handshake's auth call is
      made again by one of RECHECK_WORKERS tasks (never a task per session): an allow
      renews the credential's lifetime, a 401/403 (or another identity) closes the
      session with 1008 ``credential revoked`` unless ``onCredentialRevoked: Keep``; an
      auth server that cannot answer leaves the session as it is until the next recheck
      (a blip of the auth server must not drop every live session), but after
      MAX_UNANSWERED_RECHECKS in a row the session is closed with 1013 ``credential not
      rechecked`` (the client reconnects once the auth server answers again), unless
      ``onCredentialRevoked: Keep``.
    """

    def __init__(self, external: ExternalAuthClient,
                 route_of: Callable[[Session], Route | None]) -> None:
        self._external = external
        self._route_of = route_of
        self.deadlines = Deadlines(self._due)
        self._live: set[Session] = set()
        self._unanswered: dict[Session, int] = {}  # rechecks in a row without a decision
        self._queue: asyncio.Queue[Session] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    def started(self, session: Session) -> None:
        self._live.add(session)
        self.renew(session, session.credential_valid_until)
        self._schedule_recheck(session, session.handshake.route)

    def ended(self, session: Session) -> None:
        self._live.discard(session)
        self._unanswered.pop(session, None)
        self.deadlines.clear(session, (EXPIRE, RECHECK))

    def renew(self, session: Session, valid_until: float | None) -> None:
        """The session's credential now holds until ``valid_until`` (None: no end).
        A session that already ended is left alone: a deadline set for it would keep it
        (and the config it holds) in the heap until then."""
        if session not in self._live:
            return
        session.credential_valid_until = valid_until
        self.deadlines.set(session, EXPIRE, loop_time(valid_until) if valid_until else None)

    @staticmethod
    def expired(session: Session) -> bool:
        until = session.credential_valid_until
        return until is not None and until <= time.time()

    def _schedule_recheck(self, session: Session, route: Route) -> None:
        external = route.auth.external
        if session.handshake.who.external_call is None or external is None \
                or not external.recheck_seconds:
            self.deadlines.set(session, RECHECK, None)
            return
        interval = external.recheck_seconds * (1 - RECHECK_SPREAD * random.random())
        self.deadlines.set(session, RECHECK, asyncio.get_running_loop().time() + interval)

    def _due(self, owner: Hashable, kind: str) -> None:
        session = cast("Session", owner)
        if session not in self._live or session.closing:
            return
        route = self._route_of(session)
        if route is None:
            return  # its route is gone: the config review closes it
        if kind == EXPIRE:
            keep = route.on_credential_expired == "Keep"
            metrics.child(metrics.CREDENTIALS_EXPIRED, route.key,
                          "kept" if keep else "closed").inc()
            if not keep:
                session.close(CloseCode.POLICY_VIOLATION, "credential expired")
            return
        self._queue.put_nowait(session)
        if not self._workers:
            self._workers = [asyncio.create_task(self._work())
                             for _ in range(RECHECK_WORKERS)]

    async def _work(self) -> None:
        while True:
            session = await self._queue.get()
            try:
                await self._recheck(session)
            except Exception:
                log.exception("recheck failed", extra={"route": session.route_key})

    async def _recheck(self, session: Session) -> None:
        route = self._route_of(session)
        call = session.handshake.who.external_call
        if session not in self._live or session.closing or route is None or call is None \
                or route.auth.external is None:
            return
        try:
            allowed = await self._external.check(route, call, phase="recheck")
        except AuthFailure:
            self._revoked(session, route)
        except Refusal:  # the auth server could not decide: ask again next time
            unanswered = self._unanswered.get(session, 0) + 1
            self._unanswered[session] = unanswered
            if (unanswered >= MAX_UNANSWERED_RECHECKS and session in self._live
                    and route.on_credential_revoked == "Close"):
                session.close(CloseCode.TRY_AGAIN_LATER, "credential not rechecked")
                return
        else:
            self._unanswered.pop(session, None)
            if session in self._live and allowed.identity != _identity_value(session):
                self._revoked(session, route)  # the credential is someone else's now
            elif session in self._live:
                self.renew(session, allowed.valid_until)
        if session in self._live and not session.closing:
            self._schedule_recheck(session, route)

    @staticmethod
    def _revoked(session: Session, route: Route) -> None:
        if not session.closing and route.on_credential_revoked == "Close":
            session.close(CloseCode.POLICY_VIOLATION, "credential revoked")

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        self.deadlines.close()


def _identity_value(session: Session) -> str | None:
    identity = session.handshake.who.identity
    return identity.username if identity is not None else None
