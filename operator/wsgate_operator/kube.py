"""Talking to the Kubernetes API on the operator's own: the list at start, statuses and
Events (the official client, in threads).

Apart from that one list, the operator reads through kopf's watches; it writes only
here. A write that finds its object gone
(404) or changed under it (409) is dropped: the next build writes the truth again.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
import re
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .compiler import K8sObject
from .kinds import BY_KIND, KINDS, PROXY_POD, Kind
from .options import OperatorOptions
from .status import Event, Status

log = logging.getLogger("wsgate.kube")

COMPONENT = "wsgate-operator"


def load_client_config() -> None:
    """Find the API the way kubectl does: in-cluster, else KUBECONFIG / ~/.kube/config.
    (KUBECONFIG is read now: the client's own default is fixed when it is imported.)"""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def list_initial(options: OperatorOptions) -> dict[Kind, list[dict[str, Any]]]:
    """Every object the operator watches, listed once at start (the kinds of kinds.py,
    in the watched namespaces; the proxy pods in theirs, by label): the view is
    complete when kopf has delivered all of them. Items carry their kind and
    apiVersion (a list's items need not)."""
    namespaces: list[str | None] = list(options.namespaces) or [None]
    listed: dict[Kind, list[dict[str, Any]]] = {}
    for kind in KINDS:
        if kind is PROXY_POD:
            selector = ",".join(f"{k}={v}" for k, v in options.proxy_selector.items())
            items = _list(kind, options.proxy_namespace, label_selector=selector)
        else:
            items = [item for ns in namespaces for item in _list(kind, ns)]
        listed[kind] = [{**item, "kind": kind.kind, "apiVersion": kind.api_version}
                        for item in items if kind.filter(item, options)]
    return listed


# The client's API class of each built-in group (custom resources: CustomObjectsApi).
_APIS = {"": kubernetes.client.CoreV1Api, "discovery.k8s.io": kubernetes.client.DiscoveryV1Api}


def _list(kind: Kind, namespace: str | None, **query: str) -> list[dict[str, Any]]:
    """The items of one kind, in one namespace or all, as the API returns them (the
    client's typed list call, its body read as JSON rather than deserialized)."""
    if kind.group not in _APIS:
        custom = kubernetes.client.CustomObjectsApi()
        call: Any = functools.partial(
            custom.list_namespaced_custom_object, kind.group, kind.version, namespace,
            kind.plural) if namespace else functools.partial(
            custom.list_cluster_custom_object, kind.group, kind.version, kind.plural)
    else:
        api = _APIS[kind.group]()
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind.kind).lower()  # EndpointSlice: endpoint_slice
        call = functools.partial(getattr(api, f"list_namespaced_{snake}"), namespace) \
            if namespace else getattr(api, f"list_{snake}_for_all_namespaces")
    response = call(_preload_content=False, **query)
    return json.loads(response.data).get("items") or []


class KubeWriter:
    def __init__(self, api: kubernetes.client.ApiClient | None = None) -> None:
        api = api or kubernetes.client.ApiClient()
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._core = kubernetes.client.CoreV1Api(api)

    async def write_status(self, obj: K8sObject, status: Status) -> None:
        meta, kind = obj["metadata"], BY_KIND[obj["kind"]]
        await self._call("status", self._custom.patch_namespaced_custom_object_status,
                         kind.group, kind.version, meta["namespace"], kind.plural,
                         meta["name"], {"status": status})

    async def post_event(self, obj: K8sObject, event: Event) -> None:
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                                    namespace=meta["namespace"]),
            involved_object=kubernetes.client.V1ObjectReference(
                api_version=obj.get("apiVersion"), kind=obj["kind"], name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            reason=event.reason, message=event.message[:1024], type=event.type,
            first_timestamp=now, last_timestamp=now, count=1,
            source=kubernetes.client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT, reporting_instance=COMPONENT,
        )
        await self._call("event", self._core.create_namespaced_event, meta["namespace"], body)

    async def _call(self, what: str, method: Any, *args: Any) -> None:
        try:
            await asyncio.to_thread(method, *args)
        except ApiException as exc:
            if exc.status in (404, 409):
                log.info(f"{what} not written: the object changed or is gone",
                         extra={"status": exc.status})
            else:
                log.error(f"{what} not written", extra={"status": exc.status,
                                                        "reason": exc.reason})
