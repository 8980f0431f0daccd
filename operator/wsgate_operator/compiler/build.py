"""The build: the processors, one per source kind, run over one build context.

Shapes first (every object held to what the build reads), then the indexes, then
consumers (their credentials, then duplicates settled across each namespace), then
routes (backend endpoints, upstream TLS, allowed consumers) and the serving
certificates they name.
"""

from __future__ import annotations

from collections import defaultdict

from wsgate_proxy import config as cfg

from ..resources import WsConsumerSpec, WsRouteSpec
from . import consumers as consumer_processor
from .compiled import Compiled
from .context import BuildContext
from .objects import ObjectRef, Snapshot
from .routes import compile_route
from .secrets import ServingCertificate, merge_certificates, serving_certificate
from .shapes import parse_all, uncompilable, well_formed


def compile_snapshot(snapshot: Snapshot) -> Compiled:
    ctx = BuildContext()
    objects = well_formed(snapshot, ctx)
    ctx.index("Secret", objects.secrets)
    ctx.index("Service", objects.services)
    ctx.index("EndpointSlice", objects.endpoint_slices)

    parsed_consumers = parse_all(ctx, objects.consumers, WsConsumerSpec)
    found = {}
    owners: dict[tuple[str, str, str], list[ObjectRef]] = defaultdict(list)
    for ref, obj, spec in parsed_consumers:
        ctx.add_consumer(ref, obj, spec)
        credentials = consumer_processor.credentials(ctx, ref, spec)
        if credentials is None:
            continue
        found[ref] = (spec, credentials)
        for credential in credentials:
            owners[(ref.namespace, *consumer_processor.identifier(credential))].append(ref)
    # Each identifier's holders sorted once: a key shared by thousands of consumers
    # costs one sort, not one per holder.
    holders = {owner: sorted(ref.name for ref in refs) for owner, refs in owners.items()}
    consumers = [consumer_processor.settle(ctx, ref, spec, credentials, holders.__getitem__)
                 for ref, (spec, credentials) in found.items()]

    routes: list[cfg.Route] = []
    route_endpoints: dict[ObjectRef, int] = {}
    certificates: list[ServingCertificate] = []
    for ref, obj, spec in parse_all(ctx, objects.routes, WsRouteSpec):
        try:
            route, endpoints = compile_route(ctx, ref, obj, spec)
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            uncompilable(ctx, ref, exc)
            continue
        routes.append(route)
        route_endpoints[ref] = endpoints
        if (certificate := serving_certificate(ctx, ref, spec)) is not None:
            certificates.append(certificate)

    return Compiled(
        config=cfg.GatewayConfig.build(routes, consumers, merge_certificates(certificates)),
        problems_by_ref=ctx.problems,
        route_endpoints=route_endpoints,
    )
