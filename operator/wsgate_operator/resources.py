"""Models of the wsgate custom resources' specs, as users write them.

They validate what a person typed (field names in camelCase, as in the manifest)
so that every rejection can name the field. The compiler turns valid specs into
the proxy's contract; nothing here knows about the proxy.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "wsgate.io"
API_VERSION = "v1alpha1"
CREDENTIAL_LABEL = "wsgate.io/credential"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]*$")


def _hostname(value: str) -> str:
    if len(value) > 253 or not _HOSTNAME.match(value):
        raise ValueError(
            f"{value!r} is not a lower-case DNS name or a '*.' wildcard (e.g. 'ws.example.com')"
        )
    return value


def _header_name(value: str) -> str:
    if not _HEADER_TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class PathSpec(_Spec):
    type: Literal["Exact", "Prefix"] = "Prefix"
    value: Annotated[str, Field(pattern=r"^/[^?#\s]*$", max_length=1024)]


class SecretRef(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=253)]


class ServiceRef(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    port: Annotated[int, Field(ge=1, le=65535)] | Annotated[str, Field(min_length=1)]


class LoadBalancingSpec(_Spec):
    algorithm: Literal["RoundRobin", "LeastConnections", "ConsistentHash"] = "RoundRobin"
    hash_on: Literal["Consumer", "ClientIP", "Header"] | None = None
    header: Annotated[str, AfterValidator(_header_name)] | None = None

    @model_validator(mode="after")
    def _hash_needs_a_key(self) -> LoadBalancingSpec:
        if self.algorithm == "ConsistentHash" and self.hash_on is None:
            raise ValueError("ConsistentHash needs hashOn: Consumer, ClientIP or Header")
        if self.hash_on == "Header" and not self.header:
            raise ValueError("hashOn: Header needs header: the name of the header to hash")
        if self.hash_on is not None and self.algorithm != "ConsistentHash":
            raise ValueError("hashOn applies to algorithm ConsistentHash only")
        return self


class BackendTlsSpec(_Spec):
    # The name the upstream's certificate is checked against (and sent as SNI);
    # default: the Service's cluster DNS name, <service>.<namespace>.svc
    server_name: Annotated[str, AfterValidator(_hostname)] | None = None
    # A Secret (same namespace) whose 'ca.crt' holds the CA to trust; default: system roots
    ca_secret_ref: SecretRef | None = None


class BackendSpec(_Spec):
    service: ServiceRef
    tls: BackendTlsSpec | None = None
    path: Annotated[str, Field(pattern=r"^/")] | None = None
    load_balancing: LoadBalancingSpec = LoadBalancingSpec()
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1


class KeyAuthSpec(_Spec):
    header: Annotated[str, AfterValidator(_header_name)] = "apikey"
    query: str = "apikey"
    cookie: str = ""
    subprotocol: bool = True


class LabelSelectorRequirement(_Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []


class LabelSelector(_Spec):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            ok = {
                "In": present and labels.get(req.key) in req.values,
                "NotIn": not present or labels.get(req.key) not in req.values,
                "Exists": present,
                "DoesNotExist": not present,
            }[req.operator]
            if not ok:
                return False
        return True


class AllowedConsumersSpec(_Spec):
    names: list[str] = []
    selector: LabelSelector | None = None


AuthMethod = Literal["KeyAuth", "BasicAuth", "JWT"]


class JwtAuthSpec(_Spec):
    audience: Annotated[str, Field(min_length=1)] | None = None


class AuthSpec(_Spec):
    mode: Literal["Handshake", "FirstMessage", "None"] = "Handshake"
    methods: list[AuthMethod] = ["KeyAuth"]
    key_auth: KeyAuthSpec = KeyAuthSpec()
    jwt: JwtAuthSpec = JwtAuthSpec()
    first_message_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    hide_credentials: bool = True
    allowed_consumers: AllowedConsumersSpec = AllowedConsumersSpec()

    @model_validator(mode="after")
    def _methods_for_mode(self) -> AuthSpec:
        if self.mode != "None" and not self.methods:
            raise ValueError(
                f"mode {self.mode} needs at least one entry in methods (e.g. [KeyAuth])")
        k = self.key_auth
        if "KeyAuth" in self.methods and not (k.header or k.query or k.cookie or k.subprotocol):
            raise ValueError(
                "KeyAuth needs at least one source: keyAuth.header, .query, .cookie or .subprotocol"
            )
        return self


class LimitsSpec(_Spec):
    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_connections_per_consumer: Annotated[int, Field(ge=1)] | None = None
    max_message_bytes: Annotated[int, Field(ge=1)] | None = None
    idle_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    messages_per_second: Annotated[float, Field(gt=0)] | None = None


def _origin(value: str) -> str:
    if not _ORIGIN.match(value):
        raise ValueError(
            f"{value!r} is not an origin: scheme://host[:port] with no path "
            "(e.g. 'https://app.example.com')"
        )
    return value.lower()


_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+$")


class TlsSpec(_Spec):
    # A kubernetes.io/tls Secret in the route's namespace (tls.crt, tls.key)
    secret_name: Annotated[str, Field(min_length=1, max_length=253)]


class WsRouteSpec(_Spec):
    hosts: list[Annotated[str, AfterValidator(_hostname)]] = []
    tls: TlsSpec | None = None
    paths: Annotated[list[PathSpec], Field(min_length=1)]
    backend: BackendSpec
    # Required on purpose: a public route is said explicitly (mode: None), never by omission.
    auth: AuthSpec
    allowed_origins: list[Annotated[str, AfterValidator(_origin)]] = []
    limits: LimitsSpec = LimitsSpec()
    on_credential_revoked: Literal["Close", "Keep"] = "Close"

    @model_validator(mode="after")
    def _tls_needs_hosts(self) -> WsRouteSpec:
        if self.tls is not None and not self.hosts:
            raise ValueError("tls needs hosts: the certificate is chosen by the host name "
                             "the client asks for (SNI)")
        return self


class CredentialSpec(_Spec):
    type: AuthMethod
    secret_ref: SecretRef


class WsConsumerSpec(_Spec):
    username: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    disabled: bool = False
    credentials: list[CredentialSpec] = []
