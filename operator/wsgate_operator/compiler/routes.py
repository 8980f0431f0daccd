"""WsRoutes: what the proxy matches, authenticates, limits and where it sends sessions."""

from __future__ import annotations

from wsgate_proxy import config as cfg

from ..resources import WsRouteSpec
from .backends import resolve_endpoints
from .context import BuildContext
from .objects import K8sObject, ObjectRef
from .secrets import upstream_tls


def compile_route(ctx: BuildContext, ref: ObjectRef, obj: K8sObject, spec: WsRouteSpec
                  ) -> tuple[cfg.Route, int]:
    """The compiled route and its count of ready endpoints."""
    backend = spec.backend
    endpoints = resolve_endpoints(ctx, ref, backend.service.name, backend.service.port)
    route = cfg.Route(
        namespace=ref.namespace,
        name=ref.name,
        generation=int((obj.get("metadata") or {}).get("generation") or 0),
        hosts=tuple(spec.hosts),
        paths=tuple(cfg.PathMatch(type=p.type, value=p.value) for p in spec.paths),
        backend=cfg.Backend(
            service=backend.service.name,
            endpoints=tuple(endpoints),
            tls=upstream_tls(ctx, ref, spec),
            path_rewrite=backend.path,
            load_balancing=cfg.LoadBalancing(
                algorithm=backend.load_balancing.algorithm,
                hash_on=backend.load_balancing.hash_on,
                hash_header=backend.load_balancing.header,
            ),
            connect_timeout_seconds=backend.connect_timeout_seconds,
            retries=backend.retries,
        ),
        auth=cfg.RouteAuth(
            mode=spec.auth.mode,
            methods=tuple(spec.auth.methods),
            key_auth=cfg.KeyAuthSources(**spec.auth.key_auth.model_dump()),
            hide_credentials=spec.auth.hide_credentials,
            allowed_consumers=allowed_consumers(ctx, ref, spec),
            jwt_audience=spec.auth.jwt.audience,
            first_message_timeout_seconds=spec.auth.first_message_timeout_seconds,
        ),
        allowed_origins=tuple(spec.allowed_origins),
        limits=cfg.Limits(**spec.limits.model_dump()),
        on_credential_revoked=spec.on_credential_revoked,
    )
    return route, len(endpoints)


def allowed_consumers(ctx: BuildContext, ref: ObjectRef, spec: WsRouteSpec
                      ) -> tuple[str, ...] | None:
    """The names of the consumers allowed on the route (None: every consumer of the
    namespace), label selectors resolved against the namespace's consumers."""
    allowed = spec.auth.allowed_consumers
    if not allowed.names and allowed.selector is None:
        return None
    names = set(allowed.names)
    if allowed.selector is not None:
        names.update(ctx.consumers_matching(ref.namespace, allowed.selector))
    return tuple(sorted(names))
