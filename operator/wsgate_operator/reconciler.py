"""The operator's loop: changes wake it, a holdoff batches them, one build serves all.

An event marks the view dirty; the reconciler waits until no new change came for a
short holdoff (but no longer than a maximum since the first one, so a steady
trickle still builds), brings its compiler to the view (the compiler keeps what it
compiled per object and compiles again only what changed and what depends on it),
hands the config to the pusher, and queues every status that changed, to be written
once the pushes are done (status_writes.py). When only what the proxies run changed,
it recomputes statuses without compiling.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from wsgate_proxy.slices import SliceClock

from .compiler import Compiled, K8sObject, ObjectRef, Snapshot
from .compiler.build import Compiler
from .kinds import COMPILED
from .metrics import OperatorMetrics
from .pusher import ProxyTarget, Pusher
from .status import (
    Event,
    ProxySync,
    Status,
    consumer_status,
    generation_of,
    route_status,
    transitions,
)
from .status_writes import StatusWriter, StatusWrites

log = logging.getLogger("wsgate.reconciler")

# A build of at most this many changed objects compiles on the loop (a rotated key: one
# Secret, one consumer; about 1 ms); more, in a thread.
INLINE_CHANGES = 50
# How long after a failed status write every status is computed (and written) again.
STATUS_RETRY_SECONDS = 2.0
# How long computing statuses holds the loop before it lets other work run (the
# operator's loop relays no sessions: longer than a proxy's slices).
STATUS_SLICE_SECONDS = 0.005


@dataclass
class ClusterView:
    """What the reconciler reads: the compiler's input and the proxy pods to push to
    (running, with an IP); what changed since the last view, where the reader knows it
    (the cache does): the new body of each compiled object changed, None for one
    deleted. Without it, the compiler finds what changed by comparing the snapshot
    with what it holds, which costs the size of the view."""

    snapshot: Snapshot
    proxies: list[ProxyTarget] = field(default_factory=list)
    changes: dict[ObjectRef, K8sObject | None] | None = None
    # The routes and consumers by reference (made from the snapshot when not given).
    bodies: dict[ObjectRef, K8sObject] | None = None

    def body(self, ref: ObjectRef) -> K8sObject | None:
        if self.bodies is None:
            self.bodies = {ObjectRef.of(obj): obj
                           for obj in (*self.snapshot.routes, *self.snapshot.consumers)}
        return self.bodies.get(ref)


def _bodies(view: ClusterView, refs: frozenset[ObjectRef], kind: str) -> list[K8sObject]:
    return [body for ref in refs if ref.kind == kind and (body := view.body(ref)) is not None]


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
        # Set while no change waits for a build and none is being built: with the
        # pusher idle, status writes may go (pushes first).
        self._built_all = asyncio.Event()
        self._objects_changed = False
        self.compiled: Compiled | None = None
        self._compiler = Compiler()
        self._compiler_fresh = True  # holds nothing yet: the next build compiles the view
        self._status_all = True  # the next status pass computes every object's
        self._proxies_moved = True  # the next status pass looks at every route's
        # What the proxies ran at the last status pass (Pusher.placement): a route's
        # proxy count moves only when it does.
        self._placement: tuple[object, ...] | None = None
        # Each route's status was last computed from this body and this proxy count.
        self._route_inputs: dict[ObjectRef, tuple[K8sObject, ProxySync]] = {}
        # Sequence numbers, as Contour's tests wait on: compiles done (each with its
        # statuses queued), and status writes queued in all.
        self.builds = 0
        self.statuses_queued = 0
        self.changes = 0  # changes told of (objects_changed, proxies_changed)
        self._built = asyncio.Event()
        # What was last queued per object, so a status is not written twice while the
        # watch has not yet brought our own write back.
        self._written: dict[ObjectRef, Status] = {}
        self.statuses = StatusWrites(writer, self.metrics, self.pushes_done,
                                     self._status_failed)
        self._background: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None

    async def wait_for_build(self, after: int) -> int:
        """Wait until more than ``after`` builds are done; the count then."""
        while self.builds <= after:
            built = self._built
            await built.wait()
        return self.builds

    def idle(self) -> bool:
        """Whether nothing waits to be built or pushed now (pushes_done would return)."""
        return self._built_all.is_set() and self.pusher.idle.is_set()

    def objects_changed(self) -> None:
        self.changes += 1
        self._objects_changed = True
        self._built_all.clear()
        self._wake.set()

    def proxies_changed(self) -> None:
        self.changes += 1
        self._proxies_moved = True
        self._built_all.clear()
        self._wake.set()

    async def pushes_done(self) -> None:
        """Until no change waits for a build or a push (a proxy that keeps failing, in
        its backoff between retries, does not count)."""
        while not self.idle():
            await self._built_all.wait()
            await self.pusher.idle.wait()

    def _status_failed(self, ref: ObjectRef) -> None:
        """A status not written: every status is computed again a little later (and
        written where it still differs), without waiting for another change."""
        self._written.pop(ref, None)
        self._status_all = True
        if self._retry is None:
            def retry() -> None:
                self._retry = None
                self._built_all.clear()
                self._wake.set()

            self._retry = asyncio.get_running_loop().call_later(STATUS_RETRY_SECONDS, retry)

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
                   asyncio.create_task(self.statuses.run())]
        try:
            while True:
                await self._wake.wait()
                await self._settle()
                try:
                    await self.build()
                except Exception:
                    log.exception("build failed; the next change retries")
                finally:
                    if not self._wake.is_set():
                        self._built_all.set()
        finally:
            for helper in helpers:
                helper.cancel()
            if self._retry is not None:
                self._retry.cancel()

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
        compiling = self._objects_changed or self.compiled is None or bool(view.changes)
        if compiling:
            self._objects_changed = False
            started = time.perf_counter()
            # A few changed objects compile in a few ms, on the loop (a thread would
            # wait for the interpreter lock behind it); the whole view (at start, after a
            # failed build, or a view whose changes are not known) in a thread, so the
            # loop keeps serving. The compile shares nothing the loop changes meanwhile:
            # the view's lists are its own, and the cache replaces an object's body on
            # every event, never edits it. Only this task touches the compiler.
            whole = self._compiler_fresh or view.changes is None
            try:
                if whole or len(view.changes or ()) > INLINE_CHANGES:
                    self.compiled = await asyncio.to_thread(self._compile, view, whole)
                else:
                    self.compiled = self._compile(view, whole)
            except BaseException:
                self._compiler = Compiler()  # half updated: the next build starts afresh
                self._compiler_fresh = True
                self._objects_changed = True
                raise
            if self.builds == 0:
                # The view and the compiler's state of the first build live as long as
                # the operator: out of the collector's sight, so a full collection does
                # not walk tens of thousands of objects on every later build.
                gc.freeze()
            self.metrics.compile_seconds.observe(time.perf_counter() - started)
            for kind in COMPILED:
                self.metrics.objects.labels(kind.kind).set(
                    len(getattr(view.snapshot, str(kind.field))))
            log.info("compiled", extra={"version": self.compiled.version,
                                        "problems": len(self.compiled.problems),
                                        "seconds": round(time.perf_counter() - started, 4)})
            self.pusher.set_config(self.compiled)
            await asyncio.sleep(0)  # the pushes on their way before statuses are computed
        # Statuses follow what each build changed (every one after a failed status
        # pass: a write that failed is written again).
        changed = self.compiled.changed_refs if compiling else frozenset()
        if self._status_all:
            self._status_all, changed = False, None
        await self._queue_statuses(view, self.compiled, changed)
        if compiling:
            self.builds += 1
            self._built.set()
            self._built = asyncio.Event()

    def _compile(self, view: ClusterView, whole: bool) -> Compiled:
        if whole:
            self._compiler.sync(view.snapshot)
        else:
            self._compiler.update(view.changes or {})
        self._compiler_fresh = False
        return self._compiler.result()

    async def _queue_statuses(self, view: ClusterView, compiled: Compiled,
                        changed: frozenset[ObjectRef] | None) -> None:
        """Compute the statuses that may have moved; queue those that changed (with
        their Events). A consumer's status follows its compile (``changed``: the objects
        whose result changed; None: every object); a route's also follows what the
        proxies run, and waits until the pusher knows what each proxy runs (a restarted
        operator would otherwise write Programmed=False until it had asked them). A
        status the object carries already, or queued already, is not written: a
        restarted operator writes none."""
        now = _now()
        if changed is None:  # every object: those gone are found by their absence
            present = {ObjectRef.of(obj)
                       for obj in (*view.snapshot.routes, *view.snapshot.consumers)}
            gone = [ref for ref in self._written.keys() | self._route_inputs.keys()
                    if ref not in present]
        else:
            gone = [ref for ref in changed
                    if ref.kind in ("WsRoute", "WsConsumer") and view.body(ref) is None]
        for ref in gone:
            self._written.pop(ref, None)
            self._route_inputs.pop(ref, None)
            self.statuses.drop(ref)
        routes: list[K8sObject] = []
        if self.pusher.knows_every_proxy():
            # After a push the proxies run a new version; unless it includes other routes
            # (or generations) than the one before, no route's proxy count moved, and only
            # the routes the build changed are looked at (1,000 routes: 4 ms a pass).
            placement = self.pusher.placement()
            every_route = changed is None or (
                self._proxies_moved and placement != self._placement)
            self._proxies_moved = False
            self._placement = placement
            routes = view.snapshot.routes if every_route else _bodies(view, changed, "WsRoute")
        consumers = view.snapshot.consumers if changed is None else \
            _bodies(view, changed, "WsConsumer")
        # Every status (11,000 at 10k consumers) takes half a second, every route's when
        # a proxy comes or goes 90 ms: computed a slice at a time, so that the pushes
        # under way and the watches' events go on meanwhile.
        unchanged = 0
        clock = SliceClock(STATUS_SLICE_SECONDS)
        for obj in routes:
            if clock.due():
                await clock.pause()
            ref = ObjectRef.of(obj)
            sync = self.pusher.sync(f"{ref.namespace}/{ref.name}", generation_of(obj))
            before = self._route_inputs.get(ref)
            if changed is not None and ref not in changed and before is not None and \
                    before[0] is obj and before[1] == sync:
                continue  # nothing its status follows has moved
            self._route_inputs[ref] = (obj, sync)
            unchanged += self._offer(ref, obj, route_status(obj, compiled, sync, now))
        for obj in consumers:
            if clock.due():
                await clock.pause()
            unchanged += self._offer(ObjectRef.of(obj), obj, consumer_status(obj, compiled, now))
        self.metrics.statuses_skipped.labels("unchanged").inc(unchanged)

    def _offer(self, ref: ObjectRef, obj: K8sObject, status: Status) -> bool:
        """Queue a status unless the object carries it or it is queued already; whether
        it was left (unchanged)."""
        current = obj.get("status") or None
        if status == current or status == self._written.get(ref):
            return True
        events = transitions(ref, self._written.get(ref) or current, status)
        self.statuses.queue(ref, obj, status, events)
        self._written[ref] = status
        self.statuses_queued += 1
        return False

    async def _verify_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._verify_every)
            await self.pusher.verify()
