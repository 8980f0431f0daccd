"""Talking to the Kubernetes API on the operator's own: the list at start (the official
client, in a thread), statuses and Events (aiohttp, on the loop).

Apart from that one list, the operator reads through kopf's watches; it writes only
here. A status write that finds its object gone (404) or changed under it (409) is
dropped: the next build writes the truth again; any other failure raises
StatusNotWritten, and the write is made again.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import ssl
import time
from typing import Any

import aiohttp
import kubernetes

from .compiler import K8sObject
from .kinds import BY_KIND, KINDS, PROXY_POD, Kind
from .options import OperatorOptions
from .status import Event, Status

log = logging.getLogger("wsgate.kube")

COMPONENT = "wsgate-operator"
REQUEST_TIMEOUT_SECONDS = 30.0
# How long a token the client's hook gave is used before the hook is asked again. The
# kubeconfig loader's hook reloads the whole configuration on every call (5% of the
# operator's CPU while it writes its first 11,000 statuses); the tokens it gives live
# for minutes (a projected service account token is rotated at 80% of an hour or more).
TOKEN_REUSE_SECONDS = 10.0


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


class StatusNotWritten(RuntimeError):
    """The API refused a status write for a reason other than the object being gone or
    changed, or could not be reached: the write is made again."""


class KubeWriter:
    """Statuses and Events, written with aiohttp on the operator's loop. (The official
    client is synchronous: each call took a thread and 2.4 times the CPU, which at an
    operator's first start, one status per object, is tens of seconds.) It connects as
    the official client was configured (load_client_config): host, TLS, client
    certificate, and a token refreshed through the client's own hook."""

    def __init__(self, configuration: kubernetes.client.Configuration | None = None) -> None:
        self._config = configuration or kubernetes.client.Configuration.get_default_copy()
        self._host = self._config.host.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_until = 0.0  # time.monotonic() after which the hook is asked again

    def _authorization(self) -> str | None:
        """The Authorization header's value, from the client's configuration (its hook
        refreshes the token when due), asked at most every TOKEN_REUSE_SECONDS."""
        now = time.monotonic()
        if now >= self._token_until:
            self._token = self._config.get_api_key_with_prefix("authorization")
            self._token_until = now + TOKEN_REUSE_SECONDS
        return self._token

    async def write_status(self, obj: K8sObject, status: Status) -> None:
        meta, kind = obj["metadata"], BY_KIND[obj["kind"]]
        prefix = f"/apis/{kind.group}" if kind.group else "/api"
        url = (f"{prefix}/{kind.version}/namespaces/{meta['namespace']}/{kind.plural}/"
               f"{meta['name']}/status")
        status_code, answer = await self._send(
            "PATCH", url, {"status": status}, "application/merge-patch+json")
        if status_code in (404, 409):
            log.info("status not written: the object changed or is gone",
                     extra={"object": f"{obj['kind']} {meta['namespace']}/{meta['name']}",
                            "status": status_code})
        elif status_code >= 300:
            raise StatusNotWritten(f"the API answered {status_code}: {answer[:300]}")

    async def post_event(self, obj: K8sObject, event: Event) -> None:
        """Post an Event (best effort: one the API refuses is logged, not retried)."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": obj.get("apiVersion"), "kind": obj["kind"],
                    "name": meta["name"], "namespace": meta["namespace"],
                    "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {k: v for k, v in involved.items() if v is not None},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
        }
        try:
            status_code, answer = await self._send(
                "POST", f"/api/v1/namespaces/{meta['namespace']}/events", body,
                "application/json")
        except StatusNotWritten as exc:
            status_code, answer = 0, str(exc)
        if not 200 <= status_code < 300:
            log.error("event not written", extra={"status": status_code,
                                                  "answer": answer[:300]})

    async def _send(self, method: str, path: str, body: Any,
                    content_type: str) -> tuple[int, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if token := self._authorization():
            headers["Authorization"] = token
        try:
            async with self._http().request(method, self._host + path, data=json.dumps(body),
                                            headers=headers) as response:
                answer = await response.text()
                return response.status, answer
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StatusNotWritten(f"cannot reach the API at {self._host}: "
                                   f"{str(exc) or type(exc).__name__}") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
                connector=aiohttp.TCPConnector(ssl=self._tls()))
        return self._session

    def _tls(self) -> ssl.SSLContext | bool:
        config = self._config
        if not self._host.startswith("https:"):
            return False
        if not config.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
