"""Writing statuses and their Events to the API: after the pushes, a bounded number at a
time, only the latest per object.

A build computes statuses (status.py); the reconciler queues those that differ from what
the object carries. Here they wait, one entry per object (a second status of the same
object replaces the first; the Events of both are posted), and a fixed number of writers
send them, each one API request at a time. Before each write a writer waits until the
pushes are done (``pushes_done``: no build pending, no proxy being pushed to): a
rotated key reaches the proxies first, whatever the number of statuses still queued
(ten thousand at an operator's first start), and a status write is never in the way of
the next push for longer than the writes already in flight take.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from .compiler import K8sObject, ObjectRef
from .metrics import OperatorMetrics
from .status import Event, Status

log = logging.getLogger("wsgate.status")

# Status writes in flight at once (each is one API request). An API server answers a
# status patch in a few ms; more writers buy little and cost its other clients.
WRITERS = 16

class StatusWriter(Protocol):
    async def write_status(self, obj: K8sObject, status: Status) -> None: ...
    async def post_event(self, obj: K8sObject, event: Event) -> None: ...


class StatusWrites:
    def __init__(
        self,
        writer: StatusWriter,
        metrics: OperatorMetrics,
        pushes_done: Callable[[], Awaitable[None]],
        on_failed: Callable[[ObjectRef], None],
        *,
        writers: int = WRITERS,
    ) -> None:
        self._writer = writer
        self._metrics = metrics
        self._pushes_done = pushes_done
        self._on_failed = on_failed  # a status not written: the next build computes it again
        self._writers = writers
        # Waiting, oldest first: only the latest status of each object, with every Event
        # not posted yet.
        self._pending: dict[ObjectRef, tuple[K8sObject, Status, list[Event]]] = {}
        self._ready = asyncio.Event()
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        # Since the queue was last empty: writes done, and when the first was queued.
        self._since_empty = 0
        self._first_queued: float | None = None

    def queue(self, ref: ObjectRef, obj: K8sObject, status: Status, events: list[Event]) -> None:
        if ref in self._pending:  # not written yet: its Events are still to be posted
            self._metrics.statuses_skipped.labels("replaced").inc()
            events = self._pending[ref][2] + events
        self._pending[ref] = (obj, status, events)  # an object keeps its place in line
        if self._first_queued is None:
            self._first_queued = time.monotonic()
        self._metrics.statuses_pending.set(len(self._pending))
        self._drained.clear()
        self._ready.set()

    def drop(self, ref: ObjectRef) -> None:
        """An object gone: its status is not written."""
        if self._pending.pop(ref, None) is not None:
            self._metrics.statuses_pending.set(len(self._pending))
            self._check_drained()

    def pending(self) -> int:
        return len(self._pending)

    async def wait_drained(self) -> None:
        """Until nothing is queued or being written."""
        await self._drained.wait()

    async def run(self) -> None:
        await asyncio.gather(*(self._write_queued() for _ in range(self._writers)))

    async def _write_queued(self) -> None:
        while True:
            if not self._pending:
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._pushes_done()
            if not self._pending:
                continue
            ref = next(iter(self._pending))
            obj, status, events = self._pending.pop(ref)
            self._metrics.statuses_pending.set(len(self._pending))
            self._in_flight += 1
            try:
                await self._write(ref, obj, status, events)
            finally:
                self._in_flight -= 1
                self._check_drained()

    async def _write(self, ref: ObjectRef, obj: K8sObject, status: Status,
                     events: list[Event]) -> None:
        try:
            for event in events:
                await self._writer.post_event(obj, event)
            await self._writer.write_status(obj, status)
        except Exception:
            self._metrics.status_writes.labels("failed").inc()
            log.exception("status not written; the next build retries",
                          extra={"object": str(ref)})
            self._on_failed(ref)
            return
        self._metrics.status_writes.labels("written").inc()
        self._since_empty += 1

    def _check_drained(self) -> None:
        if self._pending or self._in_flight:
            return
        if self._first_queued is not None:
            log.info("statuses written", extra={
                "statuses": self._since_empty,
                "seconds": round(time.monotonic() - self._first_queued, 3)})
        self._since_empty, self._first_queued = 0, None
        self._drained.set()
