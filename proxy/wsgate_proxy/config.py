"""The compiled gateway configuration: the one contract between operator and proxy.

The proxy owns this model (it defines what it accepts); the operator's compiler
produces it and ``PUT /config`` carries it as JSON. It holds what the data plane
needs to decide and nothing more: credentials only in the form that verifies them
(API keys as SHA-256 digests), never in the clear.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


AuthMethod = Literal["KeyAuth", "BasicAuth", "JWT"]


class RouteAuth(_Model):
    # Handshake: the credential comes with the upgrade request. FirstMessage: the proxy
    # upgrades first and the first message must carry it. None: a public route.
    mode: Literal["Handshake", "FirstMessage", "None"] = "Handshake"
    methods: tuple[AuthMethod, ...] = ("KeyAuth",)
    key_auth: KeyAuthSources = KeyAuthSources()
    jwt_audience: str | None = None  # when set, a token's aud must include it
    first_message_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    hide_credentials: bool = True
    # Consumers allowed on the route, as names within the route's namespace;
    # None means every consumer of the namespace (the compiler resolves selectors).
    allowed_consumers: tuple[Name, ...] | None = None

    @model_validator(mode="after")
    def _methods_match_mode(self) -> RouteAuth:
        if self.mode != "None" and not self.methods:
            raise ValueError(f"auth mode {self.mode} needs at least one method")
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
    body = encoded if encoded is not None else item.model_dump_json().encode()
    return int.from_bytes(hashlib.sha256(kind.encode() + b"\n" + body).digest(), "big")


def version_of(digest_sum: int) -> str:
    """The version of a config from the sum of its items' digests: it identifies the
    whole content, and a change of one item moves it at the cost of that item (the
    sum is kept up to date, never recomputed over every item)."""
    total = (digest_sum % _DIGEST_MODULUS).to_bytes(32, "big")
    return hashlib.sha256(total).hexdigest()[:16]
