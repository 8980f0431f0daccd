"""The operator's loop: changes wake it, a holdoff batches them, one build serves all.

An event marks the view dirty; the reconciler waits until no new change came for a
short holdoff (but no longer than a maximum since the first one, so a steady
trickle still builds), compiles the whole view (the pure compiler), hands the
config to the pusher, and writes every status that changed. When only what the
proxies run changed, it recomputes statuses without compiling.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .compiler import Compiled, K8sObject, ObjectRef, Snapshot, compile_snapshot
from .kinds import COMPILED
from .metrics import OperatorMetrics
from .pusher import ProxyTarget, Pusher
from .status import Event, Status, consumer_status, route_status, transitions

log = logging.getLogger("wsgate.reconciler")

# Status writes in flight at once (each is one API request).
WRITE_CONCURRENCY = 8



@dataclass
class ClusterView:
    """What the reconciler reads: the compiler's input and the proxy pods to push to
    (running, with an IP)."""

    snapshot: Snapshot
    proxies: list[ProxyTarget] = field(default_factory=list)


class StatusWriter(Protocol):
    async def write_status(self, obj: K8sObject, status: Status) -> None: ...
    async def post_event(self, obj: K8sObject, event: Event) -> None: ...


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(
        self,
        read: Callable[[], ClusterView],
        pusher: Pusher,
        writer: StatusWriter,
        *,
        holdoff: float = 0.05,
        max_holdoff: float = 0.5,
        verify_every: float = 30.0,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._read = read
        self.pusher = pusher
        self.metrics = metrics or pusher.metrics  # one registry for the operator's parts
        self._writer = writer
        self._holdoff = holdoff
        self._max_holdoff = max_holdoff
        self._verify_every = verify_every
        self._wake = asyncio.Event()
        self._objects_changed = False
        self.compiled: Compiled | None = None
        # Sequence numbers, as Contour's tests wait on: compiles done (each with its
        # statuses queued), and status writes queued in all.
        self.builds = 0
        self.statuses_queued = 0
        self._built = asyncio.Event()
        # What was last queued per object, so a status is not written twice while the
        # watch has not yet brought our own write back.
        self._written: dict[tuple[str, str], Status] = {}
        # Status writes waiting: only the latest per object. A separate task writes them,
        # so a thousand statuses never hold back the next build and push.
        self._pending: dict[tuple[str, str], tuple[K8sObject, Status, list[Event]]] = {}
        self._pending_ready = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    async def wait_for_build(self, after: int) -> int:
        """Wait until more than ``after`` builds are done; the count then."""
        while self.builds <= after:
            built = self._built
            await built.wait()
        return self.builds

    def objects_changed(self) -> None:
        self._objects_changed = True
        self._wake.set()

    def proxies_changed(self) -> None:
        self._wake.set()

    def push_failed(self, target: ProxyTarget, reason: str, namespace: str) -> None:
        """An Event on the proxy's Pod, where `kubectl describe pod` shows it."""
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": target.name, "namespace": namespace, "uid": target.uid}}
        ref = ObjectRef("Pod", namespace, target.name)
        task = asyncio.create_task(
            self._writer.post_event(pod, Event(ref, "Warning", "PushFailed", reason)))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run(self) -> None:
        helpers = [asyncio.create_task(self._verify_periodically()),
                   asyncio.create_task(self._write_pending())]
        try:
            while True:
                await self._wake.wait()
                await self._settle()
                try:
                    await self.build()
                except Exception:
                    log.exception("build failed; the next change retries")
        finally:
            for helper in helpers:
                helper.cancel()

    async def _settle(self) -> None:
        """Wait until changes stop for the holdoff, or the maximum delay has passed."""
        deadline = time.monotonic() + self._max_holdoff
        while True:
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(min(self._holdoff, remaining)):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def build(self) -> None:
        view = self._read()
        self.pusher.set_targets(view.proxies)
        compiling = self._objects_changed or self.compiled is None
        if compiling:
            self._objects_changed = False
            started = time.perf_counter()
            # The compiler is pure Python: in a thread, the event loop keeps serving. It
            # shares nothing the loop changes meanwhile: the view's lists are its own, and
            # the cache replaces an object's body on every event, never edits it.
            self.compiled = await asyncio.to_thread(compile_snapshot, view.snapshot)
            self.metrics.compile_seconds.observe(time.perf_counter() - started)
            for kind in COMPILED:
                self.metrics.objects.labels(kind.kind).set(
                    len(getattr(view.snapshot, str(kind.field))))
            log.info("compiled", extra={"version": self.compiled.config.version,
                                        "problems": len(self.compiled.problems),
                                        "seconds": round(time.perf_counter() - started, 4)})
            self.pusher.set_config(self.compiled.config)
        await self._write_statuses(view.snapshot, self.compiled)
        if compiling:
            self.builds += 1
            self._built.set()
            self._built = asyncio.Event()

    async def _write_statuses(self, snapshot: Snapshot, compiled: Compiled) -> None:
        """Compute every status; queue those that changed (with their Events)."""
        now = _now()
        computed = []
        for obj in snapshot.routes:
            ref = ObjectRef.of(obj)
            generation = int((obj.get("metadata") or {}).get("generation") or 0)
            sync = self.pusher.sync(f"{ref.namespace}/{ref.name}", generation)
            computed.append((obj, route_status(obj, compiled, sync, now)))
        computed += [(obj, consumer_status(obj, compiled, now)) for obj in snapshot.consumers]
        seen = set()
        for obj, status in computed:
            ref = ObjectRef.of(obj)
            key = (ref.kind, f"{ref.namespace}/{ref.name}")
            seen.add(key)
            current = obj.get("status") or None
            if status == current or status == self._written.get(key):
                continue
            events = transitions(ref, self._written.get(key) or current, status)
            if key in self._pending:  # not written yet: its Events still are to be posted
                events = self._pending[key][2] + events
            self._pending[key] = (obj, status, events)
            self._written[key] = status
            self.statuses_queued += 1
        for key in set(self._written) - seen:
            del self._written[key]
            self._pending.pop(key, None)
        if self._pending:
            self._pending_ready.set()

    async def _write_pending(self) -> None:
        limit = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def write(obj: K8sObject, status: Status, events: list[Event]) -> None:
            async with limit:
                try:
                    for event in events:
                        await self._writer.post_event(obj, event)
                    await self._writer.write_status(obj, status)
                except Exception:
                    ref = ObjectRef.of(obj)
                    log.exception("status not written; the next build retries",
                                  extra={"object": str(ref)})
                    self._written.pop((ref.kind, f"{ref.namespace}/{ref.name}"), None)

        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            batch, self._pending = self._pending, {}
            started = time.perf_counter()
            await asyncio.gather(*(write(*item) for item in batch.values()))
            log.info("statuses written", extra={
                "statuses": len(batch), "events": sum(len(i[2]) for i in batch.values()),
                "seconds": round(time.perf_counter() - started, 3)})

    async def _verify_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._verify_every)
            await self.pusher.verify()
