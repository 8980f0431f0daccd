"""The operator's watches feed its view on its event loop, and events that arrive while
the reconciler builds never break a build.

The operator's loop runs in asyncio's debug mode here (tests/kube/operator.py), where
a call into it from another thread raises instead of going unnoticed."""

from __future__ import annotations

import asyncio
import logging

import kopf

from tests.support import consumer_objects, eventually, objects_for
from wsgate_operator import handlers

CR = "wsgate.io/v1alpha1"
BURST = 120


def test_kopf_runs_the_lifecycle_and_watches_nothing_itself():
    """The watched kinds are the operator's own watches (watches.py): kopf has no
    resource handler to deliver events to, so it opens no watch of its own."""
    registry = handlers.build_registry()
    assert not registry._watching.get_all_handlers()  # kopf 1.45, pinned
    assert not registry._changing.get_all_handlers()
    assert {h.fn for h in registry._activities.get_all_handlers()} == {
        handlers.login, handlers.start, handlers.stop}
    # A registry of its own: nothing of ours is in kopf's global one.
    assert not [h for h in kopf.get_default_registry()._activities.get_all_handlers()
                if h.fn.__module__ == handlers.__name__]


async def test_changes_delivered_while_builds_run_are_all_built(api, proxies, operator, upstream,
                                                               caplog):
    caplog.set_level(logging.WARNING)
    proxies.start("proxy-a", 0)
    for obj in objects_for(upstream.port):
        api.apply(obj)

    async def first_build(memo):
        return await memo.reconciler.wait_for_build(0)

    await operator.on_loop(first_build)
    # A burst of consumers, their Secrets and the proxy pod's status, spread out so that
    # builds (holdoff 50 ms) run while kopf keeps delivering events.
    for i in range(BURST):
        for obj in consumer_objects(f"c{i}", f"key-{i}"):
            api.apply(obj)
        if i % 10 == 0:
            api.apply(proxies.pod("proxy-a", "127.0.0.2", restarts=i // 10))
            await asyncio.sleep(0.03)

    async def ready(name):
        status = api.get(CR, "WsConsumer", name).get("status") or {}
        assert {c["type"]: c["status"] for c in status.get("conditions") or []}.get(
            "Ready") == "True", status

    async def all_ready():
        for i in range(BURST):
            await ready(f"c{i}")

    await eventually(all_ready, timeout=30, interval=0.2)

    async def built(memo):
        await memo.pusher.wait_idle()
        return memo.reconciler.builds, {c.name for c in memo.reconciler.compiled.config.consumers}

    builds, consumers = await operator.on_loop(built)
    assert {f"c{i}" for i in range(BURST)} | {"john"} == consumers
    assert builds > 1  # the burst was built in several builds, events arriving in between
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR
                or (r.name.startswith("wsgate") and r.levelno >= logging.WARNING)]
    assert not problems, [f"{r.name}: {r.getMessage()}" for r in problems]
