"""The compiled gateway configuration: the one contract between operator and proxy.

The proxy owns this model (it defines what it accepts); the operator's compiler
produces it and ``PUT /config`` carries it as JSON. It holds what the data plane
needs to decide and nothing more: credentials only in the form that verifies them
(API keys as SHA-256 digests), never in the clear.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Name = Annotated[str, Field(min_length=1, max_length=253)]
HexDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PASSWORD_HASH_PATTERN = r"^pbkdf2_sha256\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathMatch(_Model):
    type: Literal["Exact", "Prefix"]
    value: Annotated[str, Field(pattern=r"^/")]


class Endpoint(_Model):
    address: Name
    port: Annotated[int, Field(ge=1, le=65535)]

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class LoadBalancing(_Model):
    algorithm: Literal["RoundRobin", "LeastConnections", "ConsistentHash"] = "RoundRobin"
    hash_on: Literal["Consumer", "ClientIP", "Header"] | None = None
    hash_header: str | None = None


class UpstreamTls(_Model):
    """TLS to the upstream (wss://), verified against the system's roots or this CA."""

    server_name: Name  # for SNI and certificate verification
    ca_pem: str | None = None


class Backend(_Model):
    service: Name
    # The Service port as the route names it: its number ("8080") or its name ("ws").
    # With the route's namespace and the service it keys the endpoints (ServiceEndpoints).
    port: Annotated[str, Field(min_length=1, max_length=253)]
    tls: UpstreamTls | None = None
    path_rewrite: str | None = None
    load_balancing: LoadBalancing = LoadBalancing()
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1


class KeyAuthSources(_Model):
    """Where a route accepts an API key; an empty name switches that source off."""

    header: str = "apikey"
    query: str = "apikey"
    cookie: str = ""
    subprotocol: bool = True


AuthMethod = Literal["KeyAuth", "BasicAuth", "JWT", "External"]
Url = Annotated[str, Field(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2048)]
HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$", max_length=256)]


def spelled_any_way(names: tuple[str, ...]) -> str:
    """A regex (Python's and CEL's RE2) matching these header names in any case and with
    ``_`` for ``-`` (CGI and WSGI servers read underscores as dashes)."""
    return "(?i)^(" + "|".join(n.replace("-", "[-_]") for n in names) + ")$"


# Headers a verification (an auth server's answer, a token's claims) can never set on the
# upstream request: the body's framing (Content-Length, Transfer-Encoding: smuggling),
# what makes it a WebSocket handshake, hop-by-hop headers, and those the proxy sets.
NOT_SET_BY_VERIFICATION = spelled_any_way((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "content-length", "content-type", "expect", "sec-websocket-.*", "x-consumer-username",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"))
NOT_SET_BY_VERIFICATION_WORDS = (
    "hop-by-hop headers, Host, Content-Length, Transfer-Encoding, Upgrade, Connection, "
    "Sec-WebSocket-*, X-Consumer-Username or X-Forwarded-For/-Proto/-Host (the proxy "
    "sets those itself)")
_NOT_SET_BY_VERIFICATION = re.compile(NOT_SET_BY_VERIFICATION)


def _settable_upstream(name: str) -> str:
    if _NOT_SET_BY_VERIFICATION.match(name):
        raise ValueError(f"{name!r} cannot be set on the upstream request by an auth server's "
                         f"answer or a token's claims: not {NOT_SET_BY_VERIFICATION_WORDS}")
    return name


# A header an auth server's answer or a token's claim fills in on the upstream request.
UpstreamHeaderName = Annotated[HeaderName, AfterValidator(_settable_upstream)]


MIN_RECHECK_SECONDS = 0.5


class ExternalAuth(_Model):
    """The application's own auth endpoint, asked about each handshake (forward auth)."""

    url: Url
    request_headers: tuple[HeaderName, ...] = ("Cookie", "Authorization")
    response_headers: tuple[UpstreamHeaderName, ...] = ()
    identity_header: UpstreamHeaderName | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    cache_seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0
    recheck_seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0
    ca_pem: str | None = None  # https with a private CA; None: the system's roots

    @model_validator(mode="after")
    def _recheck_bounded(self) -> ExternalAuth:
        if 0 < self.recheck_seconds < MIN_RECHECK_SECONDS:
            raise ValueError(f"recheck_seconds is 0 (never) or at least {MIN_RECHECK_SECONDS}")
        return self


class ClaimRequirement(_Model):
    """A claim that must equal one of ``values`` or, for an array or a space-separated
    string (``scope``), contain one of them."""

    name: Annotated[str, Field(min_length=1)]
    values: Annotated[tuple[str, ...], Field(min_length=1)]


class ClaimHeader(_Model):
    claim: Annotated[str, Field(min_length=1)]
    header: UpstreamHeaderName


class JwtProvider(_Model):
    """An OpenID Connect provider whose tokens a route accepts, verified by its JWKS."""

    issuer: Url
    jwks_uri: Url | None = None  # None: discovered from <issuer>/.well-known/openid-configuration
    audiences: tuple[str, ...] = ()  # a token's aud must include one; empty: the route's audience
    required_claims: tuple[ClaimRequirement, ...] = ()
    claims_to_headers: tuple[ClaimHeader, ...] = ()
    identity_claim: Annotated[str, Field(min_length=1)] = "sub"
    ca_pem: str | None = None


class JwtOptions(_Model):
    audience: str | None = None  # when set, a token's aud must include it
    providers: tuple[JwtProvider, ...] = ()
    # Leeway for exp, nbf and iat, and after exp before a live session is closed.
    clock_skew_seconds: Annotated[int, Field(ge=0, le=600)] = 30
    cookie: str = ""  # a cookie that may carry the token; empty: none


class RouteAuth(_Model):
    # Handshake: the credential comes with the upgrade request. FirstMessage: the proxy
    # upgrades first and the first message must carry it. None: a public route.
    mode: Literal["Handshake", "FirstMessage", "None"] = "Handshake"
    methods: tuple[AuthMethod, ...] = ("KeyAuth",)
    key_auth: KeyAuthSources = KeyAuthSources()
    jwt: JwtOptions = JwtOptions()
    external: ExternalAuth | None = None
    first_message_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    hide_credentials: bool = True
    # Consumers allowed on the route, as names within the route's namespace;
    # None means every consumer of the namespace (the compiler resolves selectors).
    allowed_consumers: tuple[Name, ...] | None = None

    @model_validator(mode="after")
    def _methods_match_mode(self) -> RouteAuth:
        if self.mode != "None" and not self.methods:
            raise ValueError(f"auth mode {self.mode} needs at least one method")
        if ("External" in self.methods) != (self.external is not None):
            raise ValueError("method External and the external settings go together")
        if self.mode == "FirstMessage" and "External" in self.methods:
            raise ValueError("External reads the handshake's headers: it needs mode Handshake")
        return self


class Limits(_Model):
    """Per-route limits; None means unlimited."""

    # Live sessions per route, and per consumer on the route: across the proxies sharing
    # a limits store (--limits-redis-url), else per proxy.
    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_connections_per_consumer: Annotated[int, Field(ge=1)] | None = None
    max_message_bytes: Annotated[int, Field(ge=1)] | None = None  # all fragments, on the wire
    idle_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    messages_per_second: Annotated[float, Field(gt=0)] | None = None  # client to upstream


class Route(_Model):
    namespace: Name
    name: Name
    generation: int = 0
    hosts: tuple[str, ...] = ()
    paths: Annotated[tuple[PathMatch, ...], Field(min_length=1)]
    backend: Backend
    auth: RouteAuth = RouteAuth()
    # Origins (scheme://host[:port], lower case) a browser handshake may come from; empty: any.
    allowed_origins: tuple[str, ...] = ()
    limits: Limits = Limits()
    on_credential_revoked: Literal["Close", "Keep"] = "Close"
    on_credential_expired: Literal["Close", "Keep"] = "Close"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def endpoints_key(self) -> str:
        """The key of the ServiceEndpoints its sessions go to."""
        return endpoints_key(self.namespace, self.backend.service, self.backend.port)


def endpoints_key(namespace: str, service: str, port: str) -> str:
    return f"{namespace}/{service}:{port}"


class ServiceEndpoints(_Model):
    """The ready endpoints of one Service port, shared by every route that names it: a
    backend that scales changes this one item, not each of its routes. A route whose
    endpoints are not in the config has none (its handshakes answer 503)."""

    namespace: Name
    service: Name
    port: Annotated[str, Field(min_length=1, max_length=253)]
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def key(self) -> str:
        return endpoints_key(self.namespace, self.service, self.port)


class KeyCredential(_Model):
    # Identifies the credential (its Secret) in revocation and logs, never the key.
    id: Name
    sha256: HexDigest


class BasicCredential(_Model):
    id: Name
    username: Annotated[str, Field(min_length=1)]
    # "pbkdf2_sha256$<iterations>$<salt, base64>$<derived key, base64>", never the password.
    password_hash: Annotated[str, Field(pattern=PASSWORD_HASH_PATTERN)]


class JwtCredential(_Model):
    id: Name
    issuer: Annotated[str, Field(min_length=1)]
    algorithm: Literal["HS256", "RS256", "ES256"]
    # The HMAC secret (the one credential a proxy must hold as it is, to verify with it)
    # or a PEM public key.
    key: Annotated[str, Field(min_length=1)]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.algorithm}\n{self.key}".encode()).hexdigest()


class Consumer(_Model):
    namespace: Name
    name: Name
    username: Name
    keys: tuple[KeyCredential, ...] = ()
    basic: tuple[BasicCredential, ...] = ()
    jwt: tuple[JwtCredential, ...] = ()
    # Live sessions of the consumer on all routes (of its namespace) together; counted
    # like the route limits.
    max_connections: Annotated[int, Field(ge=1)] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Certificate(_Model):
    """A serving certificate (a kubernetes.io/tls Secret) and the host names it serves.

    The private key has to reach the proxy as it is, like a JWT HMAC secret: the proxy
    cannot terminate TLS without it. It never appears in GET /config or a log line."""

    namespace: Name
    name: Name
    hosts: Annotated[tuple[str, ...], Field(min_length=1)]
    cert_pem: Annotated[str, Field(min_length=1)]
    key_pem: Annotated[str, Field(min_length=1)]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class GatewayConfig(_Model):
    """Everything a proxy serves, versioned by the hash of its content."""

    version: str = ""
    routes: tuple[Route, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    endpoints: tuple[ServiceEndpoints, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        for kind, items in (("route", self.routes), ("consumer", self.consumers),
                            ("certificate", self.certificates), ("endpoints", self.endpoints)):
            seen: set[str] = set()
            for item in items:
                if item.key in seen:
                    raise ValueError(f"duplicate {kind} {item.key}")
                seen.add(item.key)
        return self

    def content_hash(self) -> str:
        """The version of this content (see ``version_of``)."""
        return version_of(sum(item_digest(kind, item) for kind, field in ITEM_FIELDS.items()
                              for item in getattr(self, field)))

    def items(self) -> dict[str, dict[str, Item]]:
        """The items by kind and key."""
        return {kind: {item.key: item for item in getattr(self, field)}
                for kind, field in ITEM_FIELDS.items()}


Item = Route | Consumer | Certificate | ServiceEndpoints
# The kinds of item a config holds, and the GatewayConfig field holding each.
ITEM_FIELDS: dict[str, str] = {"route": "routes", "consumer": "consumers",
                               "certificate": "certificates", "endpoints": "endpoints"}
ITEM_MODELS: dict[str, type[Item]] = {"route": Route, "consumer": Consumer,
                                      "certificate": Certificate, "endpoints": ServiceEndpoints}
_DIGEST_MODULUS = 2 ** 256


def item_digest(kind: str, item: Item, encoded: bytes | None = None) -> int:
    """An item's digest: SHA-256 of its kind and canonical JSON (``encoded``, when the
    caller has it already), as a number."""
    return digest_of(kind, encoded if encoded is not None else item.model_dump_json().encode())


def digest_of(kind: str, body: bytes) -> int:
    """The digest of an item of ``kind`` whose canonical JSON is ``body``."""
    return int.from_bytes(hashlib.sha256(kind.encode() + b"\n" + body).digest(), "big")


def version_of(digest_sum: int) -> str:
    """The version of a config from the sum of its items' digests: it identifies the
    whole content, and a change of one item moves it at the cost of that item (the
    sum is kept up to date, never recomputed over every item)."""
    total = (digest_sum % _DIGEST_MODULUS).to_bytes(32, "big")
    return hashlib.sha256(total).hexdigest()[:16]
