"""The kopf wiring: the operator's lifecycle. kopf logs in, runs ``start`` and ``stop``,
and serves the liveness probe; the watched kinds are listed and watched by the operator
itself (watches.py says why), into its view of the cluster (cache.py), and each change
wakes the reconciler.

``build_registry`` makes a kopf registry of its own for one operator. The parts
``start`` makes (API connection, cache, watches, reconciler, pusher) live in kopf's
memo; the options and metrics are put there by whoever starts the operator
(main.run_operator). Nothing is a module global: two operators can run in one process.

The first build is made from the whole view: at start every watched kind is listed
once, the first build is made from those lists at once, and each kind is then watched
from its list's resourceVersion: nothing listed is delivered again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from .cache import ClusterCache
from .collector import Collector
from .kinds import PROXY_POD, Kind
from .metrics import OperatorMetrics
from .options import OperatorOptions
from .pusher import ProxyTarget, Pusher
from .reconciler import Reconciler

log = logging.getLogger("wsgate.handlers")

def build_registry() -> kopf.OperatorRegistry:
    """A kopf registry with the operator's lifecycle handlers."""
    registry = kopf.OperatorRegistry()
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


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In the cluster: the pod's service account; elsewhere: the kubeconfig, as kubectl."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    from .kube import KubeApi, KubeWriter, load_client_config
    from .watches import Watches

    options: OperatorOptions = memo.options
    metrics: OperatorMetrics = memo.metrics
    settings.posting.enabled = False  # Events are ours (kube.py), not kopf's handler logs
    settings.scanning.disabled = True  # no watch on CRDs: the RBAC grants none
    load_client_config()
    memo.api = KubeApi()
    cache = ClusterCache(lambda body: proxy_target(body, options))
    memo.cache = cache
    pusher = Pusher(
        options.admin_token,
        on_change=lambda: memo.reconciler.proxies_changed(),
        on_failure=lambda target, reason: memo.reconciler.push_failed(
            target, reason, options.proxy_namespace),
        metrics=metrics,
    )
    memo.writer = KubeWriter(memo.api)
    reconciler = Reconciler(cache.view, pusher, memo.writer,
                            holdoff=options.holdoff, max_holdoff=options.max_holdoff,
                            verify_every=options.verify_every, metrics=metrics)
    memo.reconciler = reconciler
    memo.pusher = pusher

    def changed(kind: Kind) -> None:
        if kind is PROXY_POD:
            reconciler.proxies_changed()
        else:
            reconciler.objects_changed()

    watches = Watches(memo.api, cache, options, changed, metrics,
                      watch_seconds=options.watch_seconds)
    await watches.list_all()
    log.info("initial lists read", extra={"objects": cache.size()})
    reconciler.objects_changed()  # the first build: the whole view, now
    memo.collector = Collector(reconciler.idle, reconciler.pushes_done,
                               lambda: reconciler.changes)
    memo.tasks = [asyncio.create_task(reconciler.run()),
                  *watches.run(),
                  asyncio.create_task(_freeze_after_start(reconciler)),
                  asyncio.create_task(memo.collector.run())]


async def _freeze_after_start(reconciler: Reconciler) -> None:
    """What start-up built lives as long as the operator (the bodies listed, the
    statuses written): once the first statuses are written, it is put out of the
    collector's sight, so that a full collection does not walk it while a change waits
    to be pushed."""
    await reconciler.wait_for_build(0)
    await reconciler.statuses.wait_drained()
    gc.freeze()


async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks") or []:
        task.cancel()
    if memo.get("pusher") is not None:
        await memo.pusher.close()
    if memo.get("api") is not None:
        await memo.api.close()
