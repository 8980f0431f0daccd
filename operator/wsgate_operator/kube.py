"""Writing to the Kubernetes API: statuses and Events (the official client, in threads).

The operator reads through kopf's watches; it writes only here, so this is the one
module that talks to the API server on its own. A write that finds its object gone
(404) or changed under it (409) is dropped: the next build writes the truth again.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .compiler import K8sObject
from .options import OperatorOptions
from .resources import API_GROUP, API_VERSION
from .status import Event, Status

log = logging.getLogger("wsgate.kube")

PLURALS = {"WsRoute": "wsroutes", "WsConsumer": "wsconsumers"}
COMPONENT = "wsgate-operator"


def load_client_config() -> None:
    """Find the API the way kubectl does: in-cluster, else KUBECONFIG / ~/.kube/config.
    (KUBECONFIG is read now: the client's own default is fixed when it is imported.)"""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def list_initial(filters: dict[str, Callable[[Mapping[str, Any]], bool]],
                 options: OperatorOptions) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of every object the operator watches, listed once at
    start: the view is complete when kopf has delivered all of them."""
    custom = kubernetes.client.CustomObjectsApi()
    core = kubernetes.client.CoreV1Api()
    discovery = kubernetes.client.DiscoveryV1Api()
    namespaces: list[str | None] = list(options.namespaces) or [None]

    def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        response = call(*args, _preload_content=False, **kwargs)
        return json.loads(response.data).get("items") or []

    def each_namespace(kind: str, plural: str, group: str = "", version: str = "v1"
                       ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for ns in namespaces:
            if group:
                items += (raw(custom.list_namespaced_custom_object, group, version, ns, plural)
                          if ns else raw(custom.list_cluster_custom_object, group, version,
                                         plural))
            elif kind == "secrets":
                items += raw(core.list_namespaced_secret, ns) if ns else \
                    raw(core.list_secret_for_all_namespaces)
            elif kind == "services":
                items += raw(core.list_namespaced_service, ns) if ns else \
                    raw(core.list_service_for_all_namespaces)
            else:
                items += raw(discovery.list_namespaced_endpoint_slice, ns) if ns else \
                    raw(discovery.list_endpoint_slice_for_all_namespaces)
        return items

    listed = {
        "wsroutes": each_namespace("wsroutes", "wsroutes", API_GROUP, API_VERSION),
        "wsconsumers": each_namespace("wsconsumers", "wsconsumers", API_GROUP, API_VERSION),
        "secrets": each_namespace("secrets", "secrets"),
        "services": each_namespace("services", "services"),
        "endpointslices": each_namespace("endpointslices", "endpointslices"),
        "proxypods": raw(core.list_namespaced_pod, options.proxy_namespace,
                         label_selector=",".join(f"{k}={v}" for k, v in
                                                 options.proxy_selector.items())),
    }
    return {
        (kind, (item.get("metadata") or {}).get("namespace") or "", item["metadata"]["name"])
        for kind, items in listed.items() for item in items if filters[kind](item)
    }


class KubeWriter:
    def __init__(self, api: kubernetes.client.ApiClient | None = None) -> None:
        api = api or kubernetes.client.ApiClient()
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._core = kubernetes.client.CoreV1Api(api)

    async def write_status(self, obj: K8sObject, status: Status) -> None:
        meta = obj["metadata"]
        await self._call("status", self._custom.patch_namespaced_custom_object_status,
                         API_GROUP, API_VERSION, meta["namespace"], PLURALS[obj["kind"]],
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
