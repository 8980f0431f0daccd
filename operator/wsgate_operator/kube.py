"""Writing to the Kubernetes API: statuses and Events (the official client, in threads).

The operator reads through kopf's watches; it writes only here, so this is the one
module that talks to the API server on its own. A write that finds its object gone
(404) or changed under it (409) is dropped: the next build writes the truth again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .compiler import K8sObject
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
