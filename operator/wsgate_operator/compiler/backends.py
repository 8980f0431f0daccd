"""Backends: a route's Service port, and the ready endpoints of each Service port that
routes name, read from the Service's EndpointSlices as kube-proxy reads them.

The endpoints are an item of their own in the config (ServiceEndpoints), shared by the
routes that name the same Service port: a backend that scales changes that one item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wsgate_proxy import config as cfg

from .context import BuildContext
from .objects import K8sObject, ObjectRef


def check_backend(ctx: BuildContext, ref: ObjectRef, service_name: str,
                  port: int | str) -> None:
    """A problem on the route when its Service or the Service's port does not exist."""
    where = "spec.backend.service"
    port = port_value(port_text(port))
    service = ctx.service(ref.namespace, service_name)
    if service is None:
        ctx.problem(ref, f"{where}.name", "BackendNotFound",
                    f"Service {ref.namespace}/{service_name} does not exist; handshakes answer "
                    "503 until it does")
        return
    if _service_port(service, port) is None:
        ports = (service.get("spec") or {}).get("ports") or []
        known = ", ".join(
            f"{p.get('port')}" + (f" ({p['name']})" if p.get("name") else "") for p in ports
        ) or "none"
        ctx.problem(ref, f"{where}.port", "PortNotFound",
                    f"Service {ref.namespace}/{service_name} has no port {port!r}; its ports: "
                    f"{known}")


def port_text(port: int | str) -> str:
    """A Service port as the config names it: the number, or the name."""
    return str(port)


def port_value(text: str) -> int | str:
    """A Service port as the config names it, back as a number or a name (a name is
    never all digits: Kubernetes port names need a letter)."""
    return int(text) if text.isdigit() else text


def service_endpoints(ctx: BuildContext, namespace: str, service_name: str,
                      port: str) -> cfg.ServiceEndpoints:
    """The ready endpoints of a Service port as the config names it (none when the
    Service or the port is missing)."""
    found = cfg.ServiceEndpoints(namespace=namespace, service=service_name, port=port)
    service = ctx.service(namespace, service_name)
    match = _service_port(service, port_value(port)) if service is not None else None
    slices = ctx.slices_of(namespace, service_name)
    if match is None:
        return found
    port_name = match.get("name") or ""
    endpoints: dict[tuple[str, int], cfg.Endpoint] = {}
    for eps in slices:
        if eps.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        slice_port = next(
            (p.get("port") for p in eps.get("ports") or [] if (p.get("name") or "") == port_name),
            None,
        )
        if not slice_port:
            continue
        for ep in eps.get("endpoints") or []:
            # A missing 'ready' means ready, as the EndpointSlice API defines it.
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            if addresses:
                key = (addresses[0], int(slice_port))
                endpoints[key] = cfg.Endpoint(address=key[0], port=key[1])
    return found.model_copy(update={"endpoints": tuple(endpoints[k] for k in sorted(endpoints))})


def _service_port(service: K8sObject, port: int | str) -> Mapping[str, Any] | None:
    ports = (service.get("spec") or {}).get("ports") or []
    return next((p for p in ports if p.get("port") == port or (p.get("name") or "") == port),
                None)
