"""The kopf wiring: handlers only keep the operator's view of the cluster up to date,
and wake the reconciler when something relevant changed.

``build_registry`` makes a kopf registry of its own for one operator, from its
options: a change handler per watched kind (kinds.py), login, start-up and cleanup.
The parts the handlers feed (cache, reconciler, pusher) live in kopf's memo, set up
at start-up; the options and metrics are put there by whoever starts the operator
(main.run_operator). Nothing is a module global: two operators can run in one process.

The first build is made from the whole view: at start the operator lists each kind
once itself and builds from those lists at once, without waiting for kopf to deliver
each object (tens of thousands of deliveries take tens of seconds). kopf's deliveries
of the same objects that follow carry the same content (the same fingerprint) and
build nothing; an object kopf never delivers was deleted between the two lists, and
is dropped once kopf has delivered everything else or after a bounded wait. kopf's own
index pre-population would do the same, but in kopf 1.45 it wakes every waiting
object on each object indexed, which grows with the square of the object count
(minutes for ten thousand consumers).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from .cache import ClusterCache, key_of
from .collector import Collector
from .kinds import KINDS, PROXY_POD, Kind
from .metrics import OperatorMetrics
from .options import OperatorOptions
from .pusher import ProxyTarget, Pusher
from .reconciler import Reconciler

log = logging.getLogger("wsgate.handlers")

# How long to wait for objects listed at start that kopf never delivers (deleted since).
INITIAL_LIST_WAIT_SECONDS = 60.0
# How long start-up waits for the first build to reach the proxies before kopf starts
# its watches (which deliver every object again, and keep the loop busy meanwhile).
FIRST_PUSH_WAIT_SECONDS = 30.0


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base. kopf's default, on every event of every object, deep-copies the
    body into an "essence" and reads the last-handled-configuration annotation, for the
    old/new/diff that only on.create/update/field handlers read. Ours are all on.event
    handlers (build_registry), so that work is wasted: at an operator's first start,
    where each of 11,000 status writes comes back as an event, it was 7% of its CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        pass


def build_registry(options: OperatorOptions) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers, filtering by these options."""
    registry = kopf.OperatorRegistry()
    for kind in KINDS:
        _watch(registry, kind, options)
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)
    return registry


def proxy_target(body: Mapping[str, Any], options: OperatorOptions) -> ProxyTarget | None:
    """The push target of a proxy pod, once it runs with an IP."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running" or meta.get("deletionTimestamp"):
        return None
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    return ProxyTarget(meta.get("name", ""), meta.get("uid", ""), ip, options.proxy_admin_port,
                       restarts)


def _fingerprint(kind: Kind, body: Mapping[str, Any]) -> str:
    """What matters of an object to the build: our own status writes do not."""
    meta = body.get("metadata") or {}
    relevant = {k: v for k, v in body.items() if k not in ("status", "metadata")}
    relevant["metadata"] = {k: meta.get(k) for k in ("labels", "generation", "deletionTimestamp")}
    if kind is PROXY_POD:
        relevant["status"] = body.get("status")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _plain(kind: Kind, body: kopf.Body) -> dict[str, Any]:
    obj = copy.deepcopy(dict(body))
    obj.get("metadata", {}).pop("managedFields", None)
    return {**obj, "kind": kind.kind, "apiVersion": kind.api_version}


def _watch(registry: kopf.OperatorRegistry, kind: Kind, options: OperatorOptions) -> None:
    def passes(body: kopf.Body, **_: Any) -> bool:
        return kind.filter(body, options)

    resource = (kind.group, kind.version, kind.plural) if kind.group else \
        (kind.version, kind.plural)

    # A coroutine, so kopf runs it on the event loop: the cache and the reconciler's
    # asyncio.Events belong to the loop (kopf runs a plain function in a worker thread).
    @kopf.on.event(*resource, when=passes, id=f"{kind.plural}-changed", registry=registry)
    async def changed(memo: kopf.Memo, event: dict[str, Any], body: kopf.Body,
                      **_: Any) -> None:
        cache: ClusterCache = memo.cache
        if event.get("type") == "DELETED":
            relevant = cache.remove(kind, body)
        elif cache.holds(kind, body):
            return  # the version held already: kopf's delivery of what was listed at start
        elif kind.status_subresource and cache.restatused(kind, body):
            return  # a status written: nothing a build reads has moved
        else:
            relevant = cache.put(kind, _plain(kind, body), _fingerprint(kind, body))
        reconciler: Reconciler = memo.reconciler
        if relevant and kind is PROXY_POD:
            reconciler.proxies_changed()
        elif relevant:
            reconciler.objects_changed()


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In the cluster: the pod's service account; elsewhere: the kubeconfig, as kubectl."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    from .kube import KubeWriter, list_initial, load_client_config

    options: OperatorOptions = memo.options
    metrics: OperatorMetrics = memo.metrics
    settings.posting.enabled = False  # Events are ours (kube.py), not kopf's handler logs
    settings.scanning.disabled = True  # no watch on CRDs: the RBAC grants none
    settings.persistence.diffbase_storage = NoDiffBase()  # no handler reads a diff
    settings.watching.server_timeout = 300
    load_client_config()
    cache = ClusterCache(lambda body: proxy_target(body, options))
    memo.cache = cache
    pusher = Pusher(
        options.admin_token,
        on_change=lambda: memo.reconciler.proxies_changed(),
        on_failure=lambda target, reason: memo.reconciler.push_failed(
            target, reason, options.proxy_namespace),
        metrics=metrics,
    )
    memo.writer = KubeWriter()
    memo.reconciler = Reconciler(cache.view, pusher, memo.writer,
                                 holdoff=options.holdoff, max_holdoff=options.max_holdoff,
                                 verify_every=options.verify_every, metrics=metrics)
    memo.pusher = pusher
    listed = await asyncio.to_thread(list_initial, options)
    for kind, items in listed.items():
        for item in items:
            item.get("metadata", {}).pop("managedFields", None)
            cache.seed(kind, item, _fingerprint(kind, item))
    cache.expect({key_of(kind, item) for kind, items in listed.items() for item in items})
    log.info("initial lists read", extra={"objects": cache.size()})
    memo.reconciler.objects_changed()  # the first build: the whole view, now
    reconciler: Reconciler = memo.reconciler
    memo.collector = Collector(reconciler.idle, reconciler.pushes_done,
                               lambda: reconciler.changes)
    memo.tasks = [asyncio.create_task(reconciler.run()),
                  asyncio.create_task(_drop_undelivered(cache, reconciler)),
                  asyncio.create_task(memo.collector.run())]
    # kopf starts watching when this returns, and delivers every object again (21,000
    # deliveries at 10,000 consumers, most of the operator's CPU for seconds): the first
    # build is pushed before that, within a bound. Changes made meanwhile come with those
    # deliveries (kopf lists afresh), so nothing is missed.
    try:
        async with asyncio.timeout(FIRST_PUSH_WAIT_SECONDS):
            await memo.reconciler.wait_for_build(0)
            await pusher.idle.wait()
    except TimeoutError:
        log.warning("the first config has not reached every proxy yet; watching anyway",
                    extra={"seconds": FIRST_PUSH_WAIT_SECONDS})


async def _drop_undelivered(cache: ClusterCache, reconciler: Reconciler) -> None:
    """Once kopf has delivered what was listed at start, or after a bounded wait: drop
    what it never delivered (deleted in between)."""
    try:
        async with asyncio.timeout(INITIAL_LIST_WAIT_SECONDS):
            await cache.complete.wait()
    except TimeoutError:
        if dropped := cache.undelivered():
            log.warning("objects listed at start were never delivered (deleted since); "
                        "dropped", extra={"missing": dropped})
            reconciler.objects_changed()
    log.info("initial lists delivered", extra={"objects": cache.size()})
    # What start-up built lives as long as the operator (kopf's state of each object, the
    # bodies it delivered, the statuses written): out of the collector's sight, so that a
    # full collection does not walk it while a change waits to be pushed.
    await reconciler.statuses.wait_drained()
    gc.freeze()


async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks") or []:
        task.cancel()
    if memo.get("pusher") is not None:
        await memo.pusher.close()
    if memo.get("writer") is not None:
        await memo.writer.close()
