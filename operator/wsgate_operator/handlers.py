"""The kopf wiring: handlers only keep indexes of what the operator reads, and wake the
reconciler when something relevant changed.

kopf fills every index with its kind's initial list before it calls any handler,
so the first wake-up comes only once the whole view has arrived: a restarting
operator never builds from half a cluster, and never pushes a half-empty config.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from typing import Any

import kopf

from .compiler import Snapshot
from .options import OPTIONS
from .pusher import ProxyTarget, Pusher
from .reconciler import ClusterView, Reconciler
from .resources import API_GROUP, API_VERSION, CREDENTIAL_LABEL

_CR = (API_GROUP, API_VERSION)


def _plain(body: kopf.Body) -> dict[str, Any]:
    obj = copy.deepcopy(dict(body))
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


def _key(body: kopf.Body) -> tuple[str, str]:
    return (body.metadata.namespace or "", body.metadata.name or "")


def _watched(namespace: str | None, **_: Any) -> bool:
    return OPTIONS.watches(namespace)


def _credential_or_certificate(body: kopf.Body, namespace: str | None, **_: Any) -> bool:
    """Secrets the compiler may read: labelled credentials, TLS certificates and CAs;
    no other Secret's content is kept in the operator's memory."""
    if not OPTIONS.watches(namespace):
        return False
    labels = body.metadata.labels or {}
    data = body.get("data") or {}
    return (labels.get(CREDENTIAL_LABEL) == "true" or body.get("type") == "kubernetes.io/tls"
            or "ca.crt" in data)


def _proxy_pod(body: kopf.Body, namespace: str | None, **_: Any) -> bool:
    labels = body.metadata.labels or {}
    return namespace == OPTIONS.proxy_namespace and all(
        labels.get(k) == v for k, v in OPTIONS.proxy_selector.items())


@kopf.index(*_CR, "wsroutes", when=_watched)
def wsroutes(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(body): _plain(body)}


@kopf.index(*_CR, "wsconsumers", when=_watched)
def wsconsumers(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(body): _plain(body)}


@kopf.index("v1", "secrets", when=_credential_or_certificate)
def secrets(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(body): _plain(body)}


@kopf.index("v1", "services", when=_watched)
def services(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(body): _plain(body)}


@kopf.index("discovery.k8s.io", "v1", "endpointslices", when=_watched)
def endpointslices(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {_key(body): _plain(body)}


@kopf.index("v1", "pods", when=_proxy_pod)
def proxypods(body: kopf.Body, **_: Any) -> dict[str, ProxyTarget]:
    status = body.get("status") or {}
    ip = status.get("podIP")
    running = status.get("phase") == "Running" and not body.metadata.get("deletionTimestamp")
    if not ip or not running:
        return {}
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    name = body.metadata.name or ""
    return {name: ProxyTarget(name, body.metadata.uid or "", ip, OPTIONS.proxy_admin_port,
                              restarts)}


def _fingerprint(body: kopf.Body) -> str:
    """What matters of an object to the build: our own status writes do not."""
    meta = body.get("metadata") or {}
    relevant = {k: v for k, v in dict(body).items() if k not in ("status", "metadata")}
    relevant["metadata"] = {k: meta.get(k) for k in ("labels", "generation", "deletionTimestamp")}
    if body.get("kind") in ("Pod",):
        relevant["status"] = body.get("status")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def _changed(memo: kopf.Memo, event: dict[str, Any], body: kopf.Body, indexes: dict[str, Any],
             proxies: bool = False) -> None:
    # A handler's memo is a per-object copy of the operator's: what all handlers share
    # lives in the containers the startup handler put there.
    memo.indexes.update(indexes)
    uid = body.metadata.uid or f"{body.get('kind')}/{_key(body)}"
    seen = memo.fingerprints
    if event.get("type") == "DELETED":
        seen.pop(uid, None)
    else:
        fingerprint = _fingerprint(body)
        if seen.get(uid) == fingerprint:
            return
        seen[uid] = fingerprint
    reconciler: Reconciler = memo.reconciler
    if proxies:
        reconciler.proxies_changed()
    else:
        reconciler.objects_changed()


def _handler(plural: str, *group_version: str, proxies: bool = False, when: Any = None) -> None:
    @kopf.on.event(*group_version, plural, when=when, id=f"{plural}-changed")
    def changed(memo: kopf.Memo, event: dict[str, Any], body: kopf.Body, wsroutes: kopf.Index,
                wsconsumers: kopf.Index, secrets: kopf.Index, services: kopf.Index,
                endpointslices: kopf.Index, proxypods: kopf.Index, **_: Any) -> None:
        indexes = {"wsroutes": wsroutes, "wsconsumers": wsconsumers, "secrets": secrets,
                   "services": services, "endpointslices": endpointslices,
                   "proxypods": proxypods}
        _changed(memo, event, body, indexes, proxies=proxies)


_handler("wsroutes", *_CR, when=_watched)
_handler("wsconsumers", *_CR, when=_watched)
_handler("secrets", "v1", when=_credential_or_certificate)
_handler("services", "v1", when=_watched)
_handler("endpointslices", "discovery.k8s.io", "v1", when=_watched)
_handler("pods", "v1", proxies=True, when=_proxy_pod)


def read_view(indexes: dict[str, Any]) -> ClusterView:
    def values(name: str) -> list[Any]:
        index = indexes.get(name) or {}
        return [value for store in index.values() for value in store]

    snapshot = Snapshot(routes=values("wsroutes"), consumers=values("wsconsumers"),
                        secrets=values("secrets"), services=values("services"),
                        endpoint_slices=values("endpointslices"))
    return ClusterView(snapshot, sorted(values("proxypods"), key=lambda t: t.name))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In the cluster: the pod's service account; elsewhere: the kubeconfig, as kubectl."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    from .kube import KubeWriter, load_client_config

    settings.posting.enabled = False  # Events are ours (kube.py), not kopf's handler logs
    settings.watching.server_timeout = 300
    load_client_config()
    memo.indexes = {}
    memo.fingerprints = {}
    pusher = Pusher(
        OPTIONS.admin_token,
        on_change=lambda: memo.reconciler.proxies_changed(),
        on_failure=lambda target, reason: memo.reconciler.push_failed(
            target, reason, OPTIONS.proxy_namespace),
    )
    memo.reconciler = Reconciler(lambda: read_view(memo.indexes), pusher, KubeWriter(),
                                 holdoff=OPTIONS.holdoff, max_holdoff=OPTIONS.max_holdoff,
                                 verify_every=OPTIONS.verify_every)
    memo.pusher = pusher
    memo.task = asyncio.create_task(memo.reconciler.run())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("task")
    if task is not None:
        task.cancel()
    if memo.get("pusher") is not None:
        await memo.pusher.close()
