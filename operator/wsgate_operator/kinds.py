"""The kinds the operator watches: one table read by everything that needs to know.

The cache files objects by it, the watches (watches.py) list and watch by it, the
manifests loader accepts its compiled kinds (and their apiVersions), and the
compiler's Snapshot has one list per compiled kind. A kind added
here is watched, listed, cached and loaded from files alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .options import OperatorOptions
from .resources import API_GROUP, API_VERSION, CREDENTIAL_LABEL

Body = Mapping[str, Any]


def _meta(body: Body) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _labels(body: Body) -> Mapping[str, Any]:
    labels = _meta(body).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def in_watched_namespace(body: Body, options: OperatorOptions) -> bool:
    return options.watches(_meta(body).get("namespace"))


def credential_or_certificate(body: Body, options: OperatorOptions) -> bool:
    """Secrets the compiler may read: labelled credentials, TLS certificates and CAs;
    no other Secret's content is kept in the operator's memory."""
    data = body.get("data")
    return in_watched_namespace(body, options) and (
        _labels(body).get(CREDENTIAL_LABEL) == "true"
        or body.get("type") == "kubernetes.io/tls"
        or (isinstance(data, Mapping) and "ca.crt" in data))


def proxy_pod(body: Body, options: OperatorOptions) -> bool:
    labels = _labels(body)
    return (_meta(body).get("namespace") == options.proxy_namespace
            and all(labels.get(k) == v for k, v in options.proxy_selector.items()))


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str  # "" for the core API
    version: str
    plural: str
    # The compiler's Snapshot list that holds objects of this kind; None for kinds the
    # operator watches without compiling them (the proxy pods it pushes to).
    field: str | None
    # Which objects of the kind the operator keeps (the rest it never stores).
    filter: Callable[[Body, OperatorOptions], bool]
    # Ours, with a status subresource: every change to anything but metadata and status
    # moves metadata.generation (what tells our own status writes coming back apart).
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: tuple[Kind, ...] = (
    Kind("WsRoute", API_GROUP, API_VERSION, "wsroutes", "routes", in_watched_namespace,
         status_subresource=True),
    Kind("WsConsumer", API_GROUP, API_VERSION, "wsconsumers", "consumers",
         in_watched_namespace, status_subresource=True),
    Kind("Secret", "", "v1", "secrets", "secrets", credential_or_certificate),
    Kind("Service", "", "v1", "services", "services", in_watched_namespace),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", "endpoint_slices",
         in_watched_namespace),
    Kind("Pod", "", "v1", "pods", None, proxy_pod),
)

BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
# The kinds the compiler reads, in the order it files them.
COMPILED: tuple[Kind, ...] = tuple(k for k in KINDS if k.field is not None)
PROXY_POD = BY_KIND["Pod"]
