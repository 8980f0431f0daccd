"""Backends: a route's Service port and its ready endpoints, read from the Service's
EndpointSlices as kube-proxy reads them."""

from __future__ import annotations

from wsgate_proxy import config as cfg

from .context import BuildContext
from .objects import ObjectRef


def resolve_endpoints(ctx: BuildContext, ref: ObjectRef, service_name: str,
                      port: int | str) -> list[cfg.Endpoint]:
    """Ready endpoints of the route's Service port (a problem on the route when the
    Service or the port does not exist)."""
    where = "spec.backend.service"
    service = ctx.service(ref.namespace, service_name)
    if service is None:
        ctx.problem(ref, f"{where}.name", "BackendNotFound",
                    f"Service {ref.namespace}/{service_name} does not exist; handshakes answer "
                    "503 until it does")
        return []
    service_ports = (service.get("spec") or {}).get("ports") or []
    match = next(
        (p for p in service_ports if p.get("port") == port or (p.get("name") or "") == port),
        None,
    )
    if match is None:
        known = ", ".join(
            f"{p.get('port')}" + (f" ({p['name']})" if p.get("name") else "") for p in service_ports
        ) or "none"
        ctx.problem(ref, f"{where}.port", "PortNotFound",
                    f"Service {ref.namespace}/{service_name} has no port {port!r}; its ports: "
                    f"{known}")
        return []
    port_name = match.get("name") or ""
    endpoints: dict[tuple[str, int], cfg.Endpoint] = {}
    for eps in ctx.slices_of(ref.namespace, service_name):
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
    return [endpoints[k] for k in sorted(endpoints)]
