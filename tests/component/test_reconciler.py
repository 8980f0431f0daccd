"""The operator's core against real proxies: build, push, status, batching, catching up.

Kubernetes is not here (that is the emulator tier): the view is a list of objects the
test changes, and statuses and events are recorded where the API would take them.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import math
import socket

import pytest
from websockets.asyncio.client import connect

from tests.support import (
    KEY,
    TOKEN,
    Admin,
    consumer_objects,
    eventually,
    objects_for,
    route_of,
)
from wsgate_operator.cache import ClusterCache
from wsgate_operator.collector import NEVER, Collector
from wsgate_operator.compiler import ObjectRef, Snapshot
from wsgate_operator.kinds import BY_KIND
from wsgate_operator.kube import StatusNotWritten
from wsgate_operator.metrics import OperatorMetrics
from wsgate_operator.pusher import ProxyTarget, Pusher
from wsgate_operator.reconciler import ClusterView, Reconciler
from wsgate_operator.status import Event
from wsgate_operator.status_writes import StatusWrites


class RecordingWriter:
    def __init__(self, objects):
        self.objects = objects
        self.statuses = {}
        self.events = []
        self.writes = 0
        # Called as each write starts (what the test wants to know of that moment), and
        # then how long the write takes (an API server's answer).
        self.on_write = lambda: None
        self.delay = 0.0

    async def write_status(self, obj, status):
        self.on_write()
        if self.delay:
            await asyncio.sleep(self.delay)
        self.writes += 1
        # As the watch would bring it back: a new body in the object's place (the one
        # the build read may be in the compiler's thread).
        key = (obj["kind"], obj["metadata"]["name"])
        for i, current in enumerate(self.objects):
            if (current["kind"], current["metadata"]["name"]) == key:
                self.objects[i] = {**current, "status": status}
        self.statuses[(obj["kind"], obj["metadata"]["name"])] = status

    async def post_event(self, obj, event):
        self.events.append((obj["metadata"]["name"], event.type, event.reason, event.message))


def condition(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


class Operator:
    def __init__(self, objects, proxies, **options):
        self.objects = objects
        self.proxies = proxies  # name -> admin port
        self.writer = RecordingWriter(objects)
        self.pusher = Pusher(TOKEN, on_change=lambda: self.reconciler.proxies_changed())
        self.reconciler = Reconciler(self.read, self.pusher, self.writer, **options)
        self.task = None

    def read(self):
        targets = [ProxyTarget(name, f"uid-{name}", "127.0.0.1", port)
                   for name, port in self.proxies.items()]
        return ClusterView(Snapshot.of(self.objects), targets)

    async def __aenter__(self):
        self.task = asyncio.create_task(self.reconciler.run())
        self.reconciler.objects_changed()
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await self.pusher.close()

    def status(self, kind, name):
        return self.writer.statuses.get((kind, name))

    def pushes(self):
        return self.pusher.metrics.value("wsgate_operator_pushes_total", outcome="ok")


@pytest.fixture
def proxies(start_proxy):
    return {name: start_proxy() for name in ("proxy-a", "proxy-b")}


async def running_version(proxy) -> str | None:
    _, body = await Admin(proxy.admin_port).request("GET", "/readyz")
    return body.get("version")


async def test_build_pushes_to_every_proxy_and_programs_the_route(proxies, upstream):
    objects = objects_for(upstream.port)
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        async def programmed():
            status = op.status("WsRoute", "echo")
            assert condition(status, "Programmed")["status"] == "True"
            return status

        status = await eventually(programmed)
        version = op.reconciler.compiled.config.version
        for proxy in proxies.values():
            assert await running_version(proxy) == version
            async with connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY) as ws:
                await ws.send("via the operator")
                assert await ws.recv() == "via the operator"
        assert condition(status, "Accepted")["status"] == "True"
        assert condition(status, "ResolvedRefs")["message"] == "1 ready endpoint"
        assert status["proxies"] == {"synced": 2, "total": 2}
        assert status["endpoints"] == 1
        consumer = op.status("WsConsumer", "john")
        assert condition(consumer, "Ready")["status"] == "True"
        assert (consumer["username"], consumer["credentials"]) == ("john", 1)
        assert ("echo", "Normal", "Accepted", "the spec is valid and compiled") in op.writer.events


async def test_a_burst_makes_one_build_and_one_push_per_proxy(proxies, upstream):
    objects = objects_for(upstream.port)
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()},
                        holdoff=0.2, max_holdoff=2.0) as op:
        await eventually(lambda: _programmed(op))
        builds, pushes = op.reconciler.builds, op.pushes()
        for i in range(500):
            objects.extend(consumer_objects(f"c{i}", f"key-{i}"))
            op.reconciler.objects_changed()
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # a trickle, as a kubectl apply makes it
        await eventually(lambda: _holds_consumers(op, 501))
        await eventually(lambda: _all_run(op, proxies))
        assert op.reconciler.builds - builds == 1
        assert op.pushes() - pushes == 2
        # Unchanged content is not pushed again: once the rebuild is done, the pusher
        # has the same version and nothing to do.
        builds, version = op.reconciler.builds, op.reconciler.compiled.config.version
        op.reconciler.objects_changed()
        await asyncio.wait_for(op.reconciler.wait_for_build(builds), 5)
        assert op.reconciler.compiled.config.version == version
        await asyncio.wait_for(op.pusher.wait_idle(), 5)
        assert op.pushes() - pushes == 2


async def test_a_change_to_one_consumer_writes_one_status(proxies, upstream):
    objects = objects_for(upstream.port)
    for i in range(50):
        objects.extend(consumer_objects(f"c{i}", f"key-{i}"))
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        await eventually(lambda: _programmed(op))
        await eventually(lambda: _all_written(op))
        assert len([k for k in op.writer.statuses if k[0] == "WsConsumer"]) == 51
        await asyncio.wait_for(op.pusher.wait_idle(), 5)
        builds, writes = op.reconciler.builds, op.writer.writes
        # c7's Secret loses its key: c7 alone is no longer Ready.
        secret = next(o for o in objects if o["metadata"]["name"] == "c7-key")
        objects[objects.index(secret)] = {**secret, "stringData": {"other": "x"}}
        op.reconciler.objects_changed()
        await asyncio.wait_for(op.reconciler.wait_for_build(builds), 5)
        assert op.reconciler.compiled.changed_refs == {
            ObjectRef("Secret", "default", "c7-key"), ObjectRef("WsConsumer", "default", "c7")}
        await eventually(lambda: _all_written(op))
        assert op.writer.writes - writes == 1
        assert condition(op.status("WsConsumer", "c7"), "Ready")["status"] == "False"


async def test_route_statuses_follow_what_the_proxies_run_only_when_its_routes_moved(
        proxies, upstream):
    """After a consumer's change is pushed, the proxies run a config of the same routes:
    the status pass looks at no route (with 1,000 routes it computed each one's proxy
    count after every push). After a route's change it does."""
    objects = objects_for(upstream.port)
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        await eventually(lambda: _programmed(op))
        await asyncio.wait_for(op.reconciler.pushes_done(), 5)
        before = op.pusher.placement()
        assert [name for name, _ in before] == sorted(proxies)
        generation = op.reconciler.compiled.items["route"]["default/echo"].generation
        assert all(included == {("default/echo", generation)} for _, included in before)
        objects.extend(consumer_objects("new", "new-key"))
        op.reconciler.objects_changed()
        await eventually(lambda: _holds_consumers(op, 2))
        await eventually(lambda: _all_run(op, proxies))
        await asyncio.wait_for(op.reconciler.pushes_done(), 5)
        after = op.pusher.placement()
        assert all(a[1] is b[1] for a, b in zip(after, before, strict=True))
        route = next(o for o in objects if o["kind"] == "WsRoute")
        objects[objects.index(route)] = {
            **route, "metadata": {**route["metadata"], "generation": generation + 1}}
        op.reconciler.objects_changed()
        await eventually(lambda: _route_generation_runs(op, generation + 1))
        assert op.pusher.placement() != before


async def _route_generation_runs(op, generation):
    assert {included for _, included in op.pusher.placement()} == {
        frozenset({("default/echo", generation)})}
    assert op.status("WsRoute", "echo")["observedGeneration"] == generation


async def test_statuses_are_computed_a_slice_at_a_time(proxies, upstream):
    """Every status of a first build (half a second at 10k consumers) is computed with
    the loop let run in between: the pushes under way go on."""
    objects = objects_for(upstream.port)
    for i in range(3000):
        objects.extend(consumer_objects(f"c{i}", f"key-{i}"))
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        seen = set()
        while op.reconciler.builds == 0:  # every loop turn until the first build is done
            seen.add(op.reconciler.statuses_queued)
            await asyncio.sleep(0)
        total = op.reconciler.statuses_queued
        assert total >= 3001
        assert [n for n in seen if 0 < n < total]


async def _holds_consumers(op, count):
    assert len(op.reconciler.compiled.config.consumers) == count


async def _programmed(op):
    assert condition(op.status("WsRoute", "echo"), "Programmed")["status"] == "True"


async def _all_run(op, proxies):
    version = op.reconciler.compiled.config.version
    for proxy in proxies.values():
        assert await running_version(proxy) == version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_proxy_that_was_down_catches_up(start_proxy, upstream):
    objects = objects_for(upstream.port)
    port = free_port()
    async with Operator(objects, {"late": port}) as op:
        async def pending():
            programmed = condition(op.status("WsRoute", "echo"), "Programmed")
            assert (programmed["reason"], programmed["message"]) == (
                "Pending", "0 of 1 running proxy pods run this generation")

        await eventually(pending)
        proxy = start_proxy("--admin-listen", f"127.0.0.1:{port}")  # comes up later
        await eventually(lambda: _programmed(op), timeout=15)
        assert await running_version(proxy) == op.reconciler.compiled.config.version


async def test_a_proxy_restarted_with_an_old_config_is_brought_up_to_date(
        start_proxy, upstream, tmp_path):
    objects = objects_for(upstream.port)
    proxy = start_proxy("--state-dir", str(tmp_path))
    port = proxy.admin_port
    async with Operator(objects, {"p": port}, verify_every=0.3) as op:
        await eventually(lambda: _programmed(op))
        first = op.reconciler.compiled.config.version
        proxy.stop()  # down while the config changes
        # A new body in the route's place, as the cache stores every change (the
        # compiler takes a body it has seen as unchanged).
        route = route_of(objects)
        objects[objects.index(route)] = {
            **route, "spec": {**route["spec"], "limits": {"maxConnections": 5}}}
        op.reconciler.objects_changed()
        await eventually(lambda: _version_changed(op, first))
        restarted = start_proxy("--state-dir", str(tmp_path), "--admin-listen",
                                f"127.0.0.1:{port}")
        # It serves its saved, older config at once: the first config it applies (the
        # operator's push may already have replaced it by the time we could ask).
        applied = restarted.wait_for_log(lambda r: r.get("event") == "config applied")
        assert applied["version"] == first
        await eventually(lambda: _all_run(op, {"p": restarted}), timeout=15)


async def _version_changed(op, first):
    assert op.reconciler.compiled.config.version != first


async def test_invalid_and_unresolved_objects_are_reported_and_the_rest_flows(proxies, upstream):
    objects = objects_for(upstream.port) + consumer_objects("jane", "jane-key")
    broken = {**route_of(objects), "metadata": {"name": "broken", "generation": 3},
              "spec": {"paths": [], "backend": {"service": {"name": "echo", "port": 8080}},
                       "auth": {"methods": ["KeyAuth"]}}}
    lost = {**route_of(objects), "metadata": {"name": "lost"},
            "spec": {**route_of(objects)["spec"], "paths": [{"value": "/lost"}],
                     "backend": {"service": {"name": "nowhere", "port": 80}}}}
    unlabelled = consumer_objects("ann", "ann-key")
    unlabelled[0]["metadata"]["labels"] = {}
    objects += [broken, lost, *unlabelled]
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        await eventually(lambda: _programmed(op))
        accepted = condition(op.status("WsRoute", "broken"), "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
        assert "spec.paths: List should have at least 1 item" in accepted["message"]
        assert op.status("WsRoute", "broken")["observedGeneration"] == 3
        resolved = condition(op.status("WsRoute", "lost"), "ResolvedRefs")
        assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
        ann = op.status("WsConsumer", "ann")
        assert condition(ann, "ResolvedRefs")["reason"] == "SecretNotLabelled"
        assert condition(ann, "Ready")["reason"] == "NoCredentials"
        assert ("broken", "Warning", "InvalidSpec") in [e[:3] for e in op.writer.events]
        assert ("ann", "Warning", "SecretNotLabelled") in [e[:3] for e in op.writer.events]
        # Everything else flows: jane's key works through the proxy.
        proxy = proxies["proxy-a"]
        async with connect(f"ws://127.0.0.1:{proxy.port}/.ws",
                           additional_headers={"apikey": "jane-key"}) as ws:
            await ws.send("fine")
            assert await ws.recv() == "fine"
        # And statuses are written once: a rebuild with nothing new queues no write.
        await eventually(lambda: _all_written(op))
        written, queued = dict(op.writer.statuses), op.reconciler.statuses_queued
        builds = op.reconciler.builds
        op.reconciler.objects_changed()
        await asyncio.wait_for(op.reconciler.wait_for_build(builds), 5)
        assert op.reconciler.statuses_queued == queued
        assert op.writer.statuses == written


async def _all_written(op):
    assert op.writer.writes == op.reconciler.statuses_queued


async def test_events_during_a_compile_never_reach_it():
    # The compiler runs in a thread while the loop goes on feeding the cache: the build
    # compiles the view it read, whole, and the next build sees what came meanwhile.
    cache = ClusterCache(lambda _body: None)
    kinds = BY_KIND
    objects = objects_for(1)
    for i in range(1500):
        objects += consumer_objects(f"c{i}", f"key-{i}")
    for n, obj in enumerate(objects):
        cache.put(kinds[obj["kind"]], copy.deepcopy(obj), str(n))
    writer = RecordingWriter(objects)
    pusher = Pusher(TOKEN, on_change=lambda: None)
    reconciler = Reconciler(cache.view, pusher, writer)
    build = asyncio.create_task(reconciler.build())
    await asyncio.sleep(0)  # the build reads its view, and awaits the compiler's thread
    changes = 0
    while not build.done():  # events, delivered on the loop while the compile runs
        if changes < 500:  # bounded: a slow machine turns the loop many more times
            for obj in consumer_objects(f"c{changes}", f"key-{changes}"):
                cache.remove(kinds[obj["kind"]], obj)
            for obj in consumer_objects(f"new{changes}", "another-key"):
                cache.put(kinds[obj["kind"]], obj, f"new{changes}")
            changes += 1
        await asyncio.sleep(0)
    await build
    assert changes > 10
    assert reconciler.builds == 1
    names = {c.name for c in reconciler.compiled.config.consumers}
    assert names == {"john"} | {f"c{i}" for i in range(1500)}  # the view it started with
    reconciler.objects_changed()
    await reconciler.build()
    names = {c.name for c in reconciler.compiled.config.consumers}
    assert names == {"john"} | {f"c{i}" for i in range(changes, 1500)} | {
        f"new{i}" for i in range(changes)}
    await pusher.close()


def _pushes_done(op, proxies):
    """At this moment: no build waits, and every proxy runs the latest build."""
    version = op.reconciler.compiled.version
    return op.pusher.running() == {name: version for name in proxies}


async def test_statuses_are_written_after_the_pushes_and_never_hold_one_back(proxies, upstream):
    objects = objects_for(upstream.port)
    for i in range(300):
        objects.extend(consumer_objects(f"c{i}", f"key-{i}"))
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        moments = []
        op.writer.on_write = lambda: moments.append(_pushes_done(op, proxies))
        op.writer.delay = 0.01  # 302 writes, 16 at a time: the queue lasts a while
        await eventually(lambda: _all_run(op, proxies))
        # A key rotated while most statuses still wait: it is pushed before them.
        await eventually(lambda: _some_written(op))
        secret = next(o for o in objects if o["metadata"]["name"] == "c299-key")
        objects[objects.index(secret)] = {**secret, "stringData": {"key": "rotated"}}
        builds = op.reconciler.builds
        op.reconciler.objects_changed()
        await asyncio.wait_for(op.reconciler.wait_for_build(builds), 5)
        await asyncio.wait_for(op.pusher.wait_idle(), 5)
        assert op.reconciler.statuses.pending() > 0  # the push did not wait for them
        await asyncio.wait_for(op.reconciler.statuses.wait_drained(), 30)
        # Every write started when the proxies ran the latest build: none went first.
        assert len(moments) >= 302
        assert all(moments)
        assert op.pusher.metrics.value("wsgate_operator_status_writes_total",
                                       outcome="written") == op.writer.writes


async def _some_written(op):
    assert 16 <= op.writer.writes < 200


async def test_a_restarted_operator_writes_no_status(proxies, upstream):
    objects = objects_for(upstream.port)
    for i in range(20):
        objects.extend(consumer_objects(f"c{i}", f"key-{i}"))
    admin = {n: p.admin_port for n, p in proxies.items()}
    async with Operator(objects, admin) as first:
        await eventually(lambda: _programmed(first))
        await asyncio.wait_for(first.reconciler.statuses.wait_drained(), 10)
        assert first.writer.writes == 22  # a route and 21 consumers, once each
    # The objects now carry what the first operator wrote (the writer put it there, as
    # the API would); a new operator computes the same statuses and writes none.
    async with Operator(objects, admin) as second:
        async def all_computed():
            unchanged = second.pusher.metrics.value(
                "wsgate_operator_statuses_skipped_total", reason="unchanged")
            assert unchanged >= 22
            assert second.pusher.knows_every_proxy()

        await eventually(all_computed)
        await asyncio.wait_for(second.pusher.wait_idle(), 5)
        await asyncio.wait_for(second.reconciler.statuses.wait_drained(), 5)
        assert second.writer.writes == 0
        assert second.pushes() == 0  # and the proxies ran its config already


async def test_repeated_changes_of_one_object_are_written_once():
    written = []
    metrics = OperatorMetrics()
    gate = asyncio.Event()  # the pushes: not done until the test says so
    waiting = []

    async def pushes_done():
        waiting.append(1)
        await gate.wait()

    class Writer:
        async def write_status(self, obj, status):
            written.append((obj["metadata"]["name"], status))

        async def post_event(self, obj, event):
            written.append((obj["metadata"]["name"], event.reason))

    queue = StatusWrites(Writer(), metrics, pushes_done, lambda _key: None, writers=4)
    task = asyncio.create_task(queue.run())
    try:
        consumer = consumer_objects("c", "k")[1]
        ref = ObjectRef.of(consumer)
        for n in range(5):
            queue.queue(ref, consumer, {"n": n}, [Event(ref, "Normal", f"R{n}", "")])
        other = consumer_objects("d", "k")[1]
        queue.queue(ObjectRef.of(other), other, {"n": 0}, [])
        await eventually(lambda: _equal(len(waiting), 4))  # every writer at the gate
        assert written == []  # nothing goes before the pushes
        assert queue.pending() == 2
        gate.set()
        await asyncio.wait_for(queue.wait_drained(), 5)
        # The latest status once, after every Event; the other object's too.
        mine = [w for w in written if w[0] == "c"]
        assert mine == [("c", f"R{n}") for n in range(5)] + [("c", {"n": 4})]
        assert ("d", {"n": 0}) in written
        assert metrics.value("wsgate_operator_statuses_skipped_total", reason="replaced") == 4
        assert metrics.value("wsgate_operator_status_writes_total", outcome="written") == 2
    finally:
        task.cancel()


async def _equal(a, b):
    assert a == b


async def test_a_status_the_api_refused_is_written_again(proxies, upstream):
    objects = objects_for(upstream.port)
    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        refusals = []
        write = op.writer.write_status

        async def refuse_once(obj, status):
            if obj["metadata"]["name"] == "john" and not refusals:
                refusals.append(obj)
                raise StatusNotWritten("the API answered 503: try later")
            await write(obj, status)

        op.writer.write_status = refuse_once
        # No other change comes: the failed write alone brings it back.
        await eventually(lambda: _ready(op, "john"), timeout=15)
        assert len(refusals) == 1
        assert op.pusher.metrics.value("wsgate_operator_status_writes_total",
                                       outcome="failed") == 1


async def _ready(op, name):
    assert condition(op.status("WsConsumer", name), "Ready")["status"] == "True"


async def test_full_collections_wait_until_nothing_is_built_or_pushed(proxies, upstream):
    """A full collection walks every object while the loop waits: never while a change
    waits to be built or pushed, one once the operator has been quiet."""
    objects = objects_for(upstream.port)
    full: list[bool] = []  # per full collection: whether nothing waited to be built or pushed

    async with Operator(objects, {n: p.admin_port for n, p in proxies.items()}) as op:
        def record(phase: str, info: dict) -> None:
            if phase == "start" and info["generation"] == 2:
                full.append(op.reconciler.idle())

        automatic = gc.get_threshold()
        collector = Collector(op.reconciler.idle, op.reconciler.pushes_done,
                              lambda: op.reconciler.changes, quiet=0.3, every=0.1)
        collecting = asyncio.create_task(collector.run())
        gc.callbacks.append(record)
        try:
            await eventually(lambda: _programmed(op))
            await asyncio.wait_for(op.reconciler.pushes_done(), 5)
            objects.extend(consumer_objects("new", "new-key"))
            op.reconciler.objects_changed()
            # While that change waits: enough surviving objects to set off an automatic
            # full collection (in CPython, after threshold[2] collections of the middle
            # generation, once the survivors are 25% of what the last full one left).
            assert not op.reconciler.idle()
            survivors = [[] for _ in range(2 * math.prod(automatic) + len(gc.get_objects()))]
            assert not op.reconciler.idle()
            await eventually(lambda: _holds_consumers(op, 2))
            await eventually(lambda: _collected(collector))
        finally:
            gc.callbacks.remove(record)
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)
            gc.unfreeze()  # what the reconciler froze belongs to this test only
        assert survivors
        assert full
        assert all(full), full
        assert gc.get_threshold()[2] != NEVER  # automatic ones again, once it stopped


async def _collected(collector):
    assert collector.collections >= 1
