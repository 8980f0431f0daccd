"""Talking to the Kubernetes API: one connection (``KubeApi``, aiohttp on the operator's
loop, configured the way kubectl finds the API) that the watches read through
(watches.py) and the writer writes statuses and Events through (``KubeWriter``).

A status write that finds its object gone (404) or changed under it (409) is dropped:
the next build writes the truth again; any other failure raises StatusNotWritten, and
the write is made again.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import ssl
import time
from typing import Any

import aiohttp
import kubernetes

from .compiler import K8sObject
from .kinds import BY_KIND
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


class StatusNotWritten(RuntimeError):
    """The API refused a status write for a reason other than the object being gone or
    changed, or could not be reached: the write is made again."""


class KubeApi:
    """The operator's connection to the API, made as the official client was configured
    (load_client_config): host, TLS, client certificate, and a token refreshed through
    the client's own hook. (The official client is synchronous: each call took a thread
    and 2.4 times the CPU, which at an operator's first start, one status per object, is
    tens of seconds.)"""

    def __init__(self, configuration: kubernetes.client.Configuration | None = None) -> None:
        self._config = configuration or kubernetes.client.Configuration.get_default_copy()
        self.host = self._config.host.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_until = 0.0  # time.monotonic() after which the hook is asked again

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        """Accept, Content-Type and the Authorization header, from the client's
        configuration (its hook refreshes the token when due), whose hook is asked at
        most every TOKEN_REUSE_SECONDS."""
        now = time.monotonic()
        if now >= self._token_until:
            self._token = self._config.get_api_key_with_prefix("authorization")
            self._token_until = now + TOKEN_REUSE_SECONDS
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def http(self) -> aiohttp.ClientSession:
        """The session (made on first use, on the loop that uses it). Requests give their
        own timeouts: a watch is read for minutes, a write gets REQUEST_TIMEOUT_SECONDS."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls()))
        return self._session

    def _tls(self) -> ssl.SSLContext | bool:
        config = self._config
        if not self.host.startswith("https:"):
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


class KubeWriter:
    """Statuses and Events, written through the operator's API connection."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

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
        try:
            async with self._api.http().request(
                    method, self._api.host + path, data=json.dumps(body),
                    headers=self._api.headers(content_type),
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)) as response:
                answer = await response.text()
                return response.status, answer
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StatusNotWritten(f"cannot reach the API at {self._api.host}: "
                                   f"{str(exc) or type(exc).__name__}") from None
