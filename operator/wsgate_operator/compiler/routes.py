"""WsRoutes: what the proxy matches, authenticates, limits and where it sends sessions."""

from __future__ import annotations

from wsgate_proxy import config as cfg

from ..resources import WsRouteSpec
from .backends import resolve_endpoints
from .context import BuildContext
from .objects import K8sObject, ObjectRef
from .secrets import ca_pem, upstream_tls


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
        auth=route_auth(ctx, ref, spec),
        allowed_origins=tuple(spec.allowed_origins),
        limits=cfg.Limits(**spec.limits.model_dump()),
        on_credential_revoked=spec.on_credential_revoked,
        on_credential_expired=spec.on_credential_expired,
    )
    return route, len(endpoints)


def route_auth(ctx: BuildContext, ref: ObjectRef, spec: WsRouteSpec) -> cfg.RouteAuth:
    """spec.auth, with the CA Secrets of the External auth server and of the identity
    providers read (a CA named but missing trusts nothing: those calls fail closed)."""
    auth = spec.auth
    external = None
    if (e := auth.external) is not None:
        external = cfg.ExternalAuth(
            url=e.url, request_headers=tuple(e.request_headers),
            response_headers=tuple(e.response_headers), identity_header=e.identity_header,
            timeout_seconds=e.timeout_seconds, cache_seconds=e.cache_seconds,
            recheck_seconds=e.recheck_seconds,
            ca_pem=ca_pem(ctx, ref, "spec.auth.external.caSecretRef", e.ca_secret_ref),
        )
    providers = tuple(
        cfg.JwtProvider(
            issuer=p.issuer, jwks_uri=p.jwks_uri, audiences=tuple(p.audiences),
            required_claims=tuple(cfg.ClaimRequirement(name=c.name, values=tuple(c.values))
                                  for c in p.required_claims),
            claims_to_headers=tuple(cfg.ClaimHeader(claim=c.claim, header=c.header)
                                    for c in p.claims_to_headers),
            identity_claim=p.identity_claim,
            ca_pem=ca_pem(ctx, ref, f"spec.auth.jwt.providers[{i}].caSecretRef",
                          p.ca_secret_ref),
        )
        for i, p in enumerate(auth.jwt.providers)
    )
    return cfg.RouteAuth(
        mode=auth.mode,
        methods=tuple(auth.methods),
        key_auth=cfg.KeyAuthSources(**auth.key_auth.model_dump()),
        hide_credentials=auth.hide_credentials,
        allowed_consumers=allowed_consumers(ctx, ref, spec),
        jwt=cfg.JwtOptions(audience=auth.jwt.audience, providers=providers,
                           clock_skew_seconds=auth.jwt.clock_skew_seconds,
                           cookie=auth.jwt.cookie),
        external=external,
        first_message_timeout_seconds=auth.first_message_timeout_seconds,
    )


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
