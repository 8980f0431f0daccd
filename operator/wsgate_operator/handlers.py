"""The kopf wiring: handlers only keep the operator's view of the cluster up to date,
and wake the reconciler when something relevant changed.

Nothing is built before the initial lists of every watched kind have arrived: at
start the operator lists each kind once, and the view counts as complete when kopf
has delivered every object of those lists (or after a bounded wait, for objects
deleted in between). kopf's own index pre-population would do the same, but in kopf
1.45 it wakes every waiting object on each object indexed, which grows with the
square of the object count (minutes for ten thousand consumers).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from .cache import ClusterCache
from .options import OPTIONS
from .pusher import ProxyTarget, Pusher
from .reconciler import Reconciler
from .resources import API_GROUP, API_VERSION, CREDENTIAL_LABEL

log = logging.getLogger("wsgate.handlers")

_CR = (API_GROUP, API_VERSION)
# How long to wait for objects listed at start that kopf never delivers (deleted since).
INITIAL_LIST_WAIT_SECONDS = 60.0


def _labels(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("labels") or {}


def watched(body: Mapping[str, Any]) -> bool:
    return OPTIONS.watches((body.get("metadata") or {}).get("namespace"))


def credential_or_certificate(body: Mapping[str, Any]) -> bool:
    """Secrets the compiler may read: labelled credentials, TLS certificates and CAs;
    no other Secret's content is kept in the operator's memory."""
    return watched(body) and (
        _labels(body).get(CREDENTIAL_LABEL) == "true"
        or body.get("type") == "kubernetes.io/tls" or "ca.crt" in (body.get("data") or {}))


def proxy_pod(body: Mapping[str, Any]) -> bool:
    labels = _labels(body)
    return ((body.get("metadata") or {}).get("namespace") == OPTIONS.proxy_namespace
            and all(labels.get(k) == v for k, v in OPTIONS.proxy_selector.items()))


def proxy_target(body: Mapping[str, Any]) -> ProxyTarget | None:
    """The push target of a proxy pod, once it runs with an IP."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running" or meta.get("deletionTimestamp"):
        return None
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    return ProxyTarget(meta.get("name", ""), meta.get("uid", ""), ip, OPTIONS.proxy_admin_port,
                       restarts)


def _fingerprint(kind: str, body: Mapping[str, Any]) -> str:
    """What matters of an object to the build: our own status writes do not."""
    meta = body.get("metadata") or {}
    relevant = {k: v for k, v in body.items() if k not in ("status", "metadata")}
    relevant["metadata"] = {k: meta.get(k) for k in ("labels", "generation", "deletionTimestamp")}
    if kind == "proxypods":
        relevant["status"] = body.get("status")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _plain(body: kopf.Body) -> dict[str, Any]:
    obj = copy.deepcopy(dict(body))
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


def _handler(kind: str, *resource: str, when: Any) -> None:
    def passes(body: kopf.Body, **_: Any) -> bool:
        return bool(when(body))

    # A coroutine, so kopf runs it on the event loop: the cache and the reconciler's
    # asyncio.Events belong to the loop (kopf runs a plain function in a worker thread).
    @kopf.on.event(*resource, when=passes, id=f"{kind}-changed")
    async def changed(memo: kopf.Memo, event: dict[str, Any], body: kopf.Body,
                      **_: Any) -> None:
        cache: ClusterCache = memo.cache
        if event.get("type") == "DELETED":
            relevant = cache.remove(kind, body)
        else:
            relevant = cache.put(kind, _plain(body), _fingerprint(kind, body))
        reconciler: Reconciler = memo.reconciler
        if not cache.complete.is_set():
            return  # the first build waits for the whole view
        if relevant and kind == "proxypods":
            reconciler.proxies_changed()
        elif relevant:
            reconciler.objects_changed()


_handler("wsroutes", *_CR, "wsroutes", when=watched)
_handler("wsconsumers", *_CR, "wsconsumers", when=watched)
_handler("secrets", "v1", "secrets", when=credential_or_certificate)
_handler("services", "v1", "services", when=watched)
_handler("endpointslices", "discovery.k8s.io", "v1", "endpointslices", when=watched)
_handler("proxypods", "v1", "pods", when=proxy_pod)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In the cluster: the pod's service account; elsewhere: the kubeconfig, as kubectl."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    from .kube import KubeWriter, list_initial, load_client_config

    settings.posting.enabled = False  # Events are ours (kube.py), not kopf's handler logs
    settings.scanning.disabled = True  # no watch on CRDs: the RBAC grants none
    settings.watching.server_timeout = 300
    load_client_config()
    cache = ClusterCache(proxy_target)
    memo.cache = cache
    pusher = Pusher(
        OPTIONS.admin_token,
        on_change=lambda: memo.reconciler.proxies_changed(),
        on_failure=lambda target, reason: memo.reconciler.push_failed(
            target, reason, OPTIONS.proxy_namespace),
    )
    memo.reconciler = Reconciler(cache.view, pusher, KubeWriter(),
                                 holdoff=OPTIONS.holdoff, max_holdoff=OPTIONS.max_holdoff,
                                 verify_every=OPTIONS.verify_every)
    memo.pusher = pusher
    listed = await asyncio.to_thread(list_initial, {
        "wsroutes": watched, "wsconsumers": watched, "secrets": credential_or_certificate,
        "services": watched, "endpointslices": watched, "proxypods": proxy_pod,
    }, OPTIONS)
    cache.expect(listed)
    memo.tasks = [asyncio.create_task(memo.reconciler.run()),
                  asyncio.create_task(_first_build(cache, memo.reconciler))]


async def _first_build(cache: ClusterCache, reconciler: Reconciler) -> None:
    try:
        async with asyncio.timeout(INITIAL_LIST_WAIT_SECONDS):
            await cache.complete.wait()
    except TimeoutError:
        log.warning("objects listed at start never arrived (deleted since?); building anyway",
                    extra={"missing": cache.missing()})
        cache.complete.set()
    log.info("initial lists complete", extra={"objects": cache.size()})
    reconciler.objects_changed()


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks") or []:
        task.cancel()
    if memo.get("pusher") is not None:
        await memo.pusher.close()
