"""The operator's cache tells each build what changed, so a build compiles that alone;
the incremental compile the reconciler then runs equals a fresh compile of the view."""

from __future__ import annotations

import copy

from tests.support import consumer_objects, objects_for
from wsgate_operator.cache import ClusterCache, fingerprint
from wsgate_operator.compiler import ObjectRef, compile_snapshot
from wsgate_operator.kinds import BY_KIND
from wsgate_operator.pusher import Pusher
from wsgate_operator.reconciler import Reconciler


def _put(cache: ClusterCache, obj: dict) -> bool:
    kind = BY_KIND[obj["kind"]]
    return cache.put(kind, obj, fingerprint(kind, obj))


def test_a_view_carries_what_changed_since_the_last_one():
    cache = ClusterCache(lambda _body: None)
    secret, consumer = consumer_objects("ann", "k1")
    _put(cache, secret)
    _put(cache, consumer)
    first = cache.view()
    assert set(first.changes) == {ObjectRef("Secret", "default", "ann-key"),
                                  ObjectRef("WsConsumer", "default", "ann")}
    assert cache.view().changes == {}  # taken by the view before
    # Our own status write coming back is no change to compile; a new key is.
    assert not _put(cache, {**consumer, "status": {"conditions": []}})
    rotated = {**secret, "stringData": {"key": "k2"}}
    assert _put(cache, rotated)
    assert cache.view().changes == {ObjectRef("Secret", "default", "ann-key"): rotated}
    assert cache.remove(BY_KIND["WsConsumer"], consumer)
    view = cache.view()
    assert view.changes == {ObjectRef("WsConsumer", "default", "ann"): None}
    assert view.body(ObjectRef("WsConsumer", "default", "ann")) is None
    # Proxy pods are watched, not compiled: never a change to compile.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}
    assert _put(cache, pod)
    assert cache.view().changes == {}


async def test_builds_from_the_changes_equal_a_fresh_compile():
    cache = ClusterCache(lambda _body: None)
    objects = objects_for(9001)
    for i in range(30):
        objects += consumer_objects(f"c{i}", f"key-{i}")
    for obj in objects:
        _put(cache, copy.deepcopy(obj))

    class Writer:
        async def write_status(self, obj, status):
            pass

        async def post_event(self, obj, event):
            pass

    reconciler = Reconciler(cache.view, Pusher("token", on_change=lambda: None), Writer())
    await reconciler.build()
    steps = [
        lambda: _put(cache, {**consumer_objects("c3", "key-3")[0],
                             "stringData": {"key": "key-4"}}),  # now shared with c4
        lambda: cache.remove(BY_KIND["WsConsumer"], consumer_objects("c4", "x")[1]),
        lambda: [_put(cache, o) for o in consumer_objects("new", "key-new")],
        lambda: cache.remove(BY_KIND["Secret"], consumer_objects("c5", "x")[0]),
    ]
    for change in steps:
        change()
        reconciler.objects_changed()
        await reconciler.build()
        fresh = compile_snapshot(cache.view().snapshot)
        assert reconciler.compiled.items == fresh.items
        assert reconciler.compiled.problems_by_ref == fresh.problems_by_ref
        assert reconciler.compiled.version == fresh.version
    # c3 and c4 held key-4 together (both refused); with c4 gone, c3 holds it alone.
    assert "default/c3" in reconciler.compiled.items["consumer"]
    assert reconciler.compiled.problems_of(ObjectRef("WsConsumer", "default", "c5"))


def test_a_status_written_is_held_without_a_fingerprint_and_is_no_change():
    """A status write coming back (same generation, labels and deletionTimestamp) is
    held with its new status and metadata, and builds nothing; a spec change (the
    generation moved) or a label change is left to the fingerprint."""
    cache = ClusterCache(lambda _body: None)
    kind = BY_KIND["WsConsumer"]
    _secret, consumer = consumer_objects("ann", "k1")
    consumer["metadata"].update(generation=1, resourceVersion="1")
    _put(cache, consumer)
    cache.view()
    echo = {**consumer, "metadata": {**consumer["metadata"], "resourceVersion": "2",
                                     "managedFields": [{"manager": "wsgate"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert cache.restatused(kind, echo)
    view = cache.view()
    assert view.changes == {}
    held = view.body(ObjectRef("WsConsumer", "default", "ann"))
    assert held["status"] == echo["status"]
    assert held["metadata"]["resourceVersion"] == "2"
    assert "managedFields" not in held["metadata"]
    assert held["spec"] == consumer["spec"]
    assert not _put(cache, echo)  # what the fingerprint says of it too
    moved = {**echo, "metadata": {**echo["metadata"], "generation": 2},
             "spec": {**consumer["spec"], "disabled": True}}
    assert not cache.restatused(kind, moved)
    relabelled = {**echo, "metadata": {**echo["metadata"], "labels": {"tier": "gold"}}}
    assert not cache.restatused(kind, relabelled)
    assert not cache.restatused(kind, {**echo, "metadata": {"name": "other"}})
