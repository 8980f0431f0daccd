"""The wsgate custom resources, as users write them: one source for two uses.

The models validate what a person typed (field names in camelCase, as in the
manifest) so that every rejection can name the field; and ``crds.py`` generates the
CustomResourceDefinitions in ``crds/`` from them, each field's docstring becoming the
``description`` that ``kubectl explain`` shows. Rules that tie one field to another are
written twice on purpose: as a validator here, and as a CEL rule (``x-kubernetes-
validations``) for the API server.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from wsgate_proxy.config import (
    MIN_RECHECK_SECONDS,
    NOT_SET_BY_VERIFICATION,
    NOT_SET_BY_VERIFICATION_WORDS,
    spelled_any_way,
)

API_GROUP = "wsgate.io"
API_VERSION = "v1alpha1"
CREDENTIAL_LABEL = "wsgate.io/credential"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_HEADER_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]*$")
_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+$")
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
# Headers an External auth call never carries, whatever a route lists: hop-by-hop
# headers, the upgrade and the handshake's own, and those the proxy sets itself.
NOT_SENT_TO_AUTH = re.compile(spelled_any_way((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "content-length", "content-type", "expect", "accept-encoding", "x-original-url",
    "sec-websocket-.*", "x-forwarded-.*")))


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


def _http_url(value: str) -> str:
    if not _HTTP_URL.match(value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _origin(value: str) -> str:
    if not _ORIGIN.match(value):
        raise ValueError(
            f"{value!r} is not an origin: scheme://host[:port] with no path "
            "(e.g. 'https://app.example.com')"
        )
    return value.lower()


# The patterns go to the CRD only; here the validators say what is wrong in words.
Hostname = Annotated[str, AfterValidator(_hostname), Field(
    max_length=253, json_schema_extra={"pattern": _HOSTNAME.pattern})]
HeaderName = Annotated[str, AfterValidator(_header_name), Field(
    max_length=256, json_schema_extra={"pattern": _HEADER_TOKEN.pattern})]
Origin = Annotated[str, AfterValidator(_origin), Field(
    max_length=512, json_schema_extra={"pattern": _ORIGIN.pattern})]
HttpUrl = Annotated[str, AfterValidator(_http_url), Field(
    max_length=2048, json_schema_extra={"pattern": _HTTP_URL.pattern})]


def cel(*rules: tuple[str, str]) -> dict:
    """CEL rules (rule, message) for the CRD, next to the validator that does the same."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True,
        use_attribute_docstrings=True,
    )


class PathSpec(_Spec):
    type: Literal["Exact", "Prefix"] = "Prefix"
    """Exact matches the path only; Prefix matches it and everything below it, by whole
    segments (/ws matches /ws and /ws/a, not /wsx)."""
    value: Annotated[str, Field(pattern=r"^/[^?#\s]*$", max_length=1024)]
    """The path, starting with '/'."""


class SecretRef(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """The Secret's name, in the same namespace."""


class ServiceRef(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    """The Service's name, in the route's namespace."""
    port: Annotated[int, Field(ge=1, le=65535)] | Annotated[str, Field(min_length=1)]
    """The Service port: its number or its name."""


class LoadBalancingSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("self.algorithm != 'ConsistentHash' || has(self.hashOn)",
         "ConsistentHash needs hashOn: Consumer, ClientIP or Header"),
        ("!has(self.hashOn) || self.hashOn != 'Header' || has(self.header)",
         "hashOn: Header needs header: the name of the header to hash"),
        ("!has(self.hashOn) || self.algorithm == 'ConsistentHash'",
         "hashOn applies to algorithm ConsistentHash only"),
    ))

    algorithm: Literal["RoundRobin", "LeastConnections", "ConsistentHash"] = "RoundRobin"
    """RoundRobin: endpoints in turn. LeastConnections: the endpoint with the fewest live
    sessions on the proxy. ConsistentHash: the same key (hashOn) stays on the same endpoint
    while the endpoint set is unchanged; one endpoint more or less moves about 1/N of keys."""
    hash_on: Literal["Consumer", "ClientIP", "Header"] | None = None
    """What ConsistentHash hashes: the authenticated consumer, the client's IP address, or
    a request header (named by header). Required with ConsistentHash."""
    header: HeaderName | None = None
    """The header hashed with hashOn: Header."""

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
    server_name: Hostname | None = None
    """The name the upstream's certificate must carry (also sent as SNI). Default: the
    Service's cluster DNS name, <service>.<namespace>.svc."""
    ca_secret_ref: SecretRef | None = None
    """A Secret whose 'ca.crt' holds the CA certificates to trust. Default: the system's
    roots."""


class BackendSpec(_Spec):
    service: ServiceRef
    """The Service whose ready endpoints (from its EndpointSlices) receive the sessions."""
    tls: BackendTlsSpec | None = None
    """Connect to the upstream with TLS (wss://); present (even empty) to enable."""
    path: Annotated[str, Field(pattern=r"^/", max_length=1024)] | None = None
    """Replaces the matched path prefix in the upstream request (an Exact match: the whole
    path)."""
    load_balancing: LoadBalancingSpec = LoadBalancingSpec()
    """How an endpoint is chosen for a new session."""
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    """How long to wait for one endpoint's connection and WebSocket handshake."""
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    """How many further endpoints to try when one fails to connect or answers 5xx; only
    when all fail does the client get 502. A failing endpoint is then avoided for a
    growing while."""


class KeyAuthSpec(_Spec):
    header: HeaderName = "apikey"
    """The request header that may carry the key; empty switches this source off."""
    query: Annotated[str, Field(max_length=256)] = "apikey"
    """The query parameter that may carry the key; empty switches this source off."""
    cookie: Annotated[str, Field(max_length=256)] = ""
    """The cookie that may carry the key; empty (the default) switches this source off."""
    subprotocol: bool = True
    """Accept the key as a Sec-WebSocket-Protocol entry
    'base64url.apikey.wsgate.io.<base64url(key)>': what a browser can send."""


class LabelSelectorRequirement(_Spec):
    key: Annotated[str, Field(min_length=1)]
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the label relates to values."""
    values: list[str] = []
    """The values for In and NotIn."""


class LabelSelector(_Spec):
    match_labels: dict[str, str] = {}
    """Labels a consumer must have, with these values."""
    match_expressions: list[LabelSelectorRequirement] = []
    """Further requirements on a consumer's labels; all must hold."""

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
    names: list[Annotated[str, Field(min_length=1)]] = []
    """WsConsumers (by name, in the route's namespace) allowed on the route."""
    selector: LabelSelector | None = None
    """WsConsumers (by label) allowed on the route. With names: either admits. With
    neither: every consumer of the namespace."""


class RequiredClaimSpec(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    """The claim, e.g. scope, roles, groups."""
    values: Annotated[list[Annotated[str, Field(max_length=1024)]],
                      Field(min_length=1, max_length=64)]
    """The claim must equal one of these or, when it is an array or a space-separated
    string (scope), contain one of them."""


class ClaimToHeaderSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!self.header.matches('" + NOT_SET_BY_VERIFICATION + "')",
         "header cannot name " + NOT_SET_BY_VERIFICATION_WORDS),
    ))

    claim: Annotated[str, Field(min_length=1, max_length=256)]
    """The claim to send: strings as they are, numbers and booleans as JSON writes them,
    arrays comma-joined; an object refuses the handshake (403)."""
    header: HeaderName
    """The upstream request header that carries it; a client's own copy of it (under any
    spelling) is always removed."""

    @model_validator(mode="after")
    def _settable(self) -> ClaimToHeaderSpec:
        if re.match(NOT_SET_BY_VERIFICATION, self.header):
            raise ValueError(f"header cannot name {self.header!r}: not "
                             + NOT_SET_BY_VERIFICATION_WORDS)
        return self


class JwtProviderSpec(_Spec):
    issuer: HttpUrl
    """The provider's issuer, exactly as tokens carry it in iss (e.g.
    https://idp.example.com/realms/demo); it selects the provider."""
    jwks_uri: HttpUrl | None = None
    """Where the provider publishes its signing keys (JWKS). Default: the jwks_uri of
    <issuer>/.well-known/openid-configuration. The proxies fetch it themselves."""
    audiences: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]],
                         Field(max_length=32)] = []
    """A token's aud must include one of these. Empty: jwt.audience, when set; else aud
    is not checked (any application's token from this provider would do: set it)."""
    required_claims: Annotated[list[RequiredClaimSpec], Field(max_length=32)] = []
    """Claims a token must carry (all of them), else 403."""
    claims_to_headers: Annotated[list[ClaimToHeaderSpec], Field(max_length=32)] = []
    """Claims sent to the upstream as request headers."""
    identity_claim: Annotated[str, Field(min_length=1, max_length=256)] = "sub"
    """The claim that says whose the token is: the session's identity (per-consumer
    limits, ConsistentHash on Consumer, X-Consumer-Username, the access log)."""
    ca_secret_ref: SecretRef | None = None
    """For an https issuer or jwksUri with a private CA: a Secret whose 'ca.crt' holds the
    CA certificates to trust. Default: the system's roots."""


class JwtAuthSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.providers) || self.providers.all(p, self.providers.exists_one(q, "
         "q.issuer == p.issuer))", "each provider's issuer must be different"),
    ))

    audience: Annotated[str, Field(min_length=1)] | None = None
    """When set, a token's aud claim must include it (for a provider: unless it lists
    audiences of its own)."""
    providers: Annotated[list[JwtProviderSpec], Field(max_length=16)] = []
    """OpenID Connect providers whose tokens the route accepts, verified with their
    published keys; no WsConsumer needed. A token whose iss is none of them must be a
    WsConsumer's JWT credential."""
    clock_skew_seconds: Annotated[int, Field(ge=0, le=600)] = 30
    """Leeway for exp, nbf and iat; a session is closed this long after its token's exp."""
    cookie: Annotated[str, Field(max_length=256)] = ""
    """A cookie that may carry the token (e.g. an app's access_token cookie); empty (the
    default): none."""

    @model_validator(mode="after")
    def _issuers_differ(self) -> JwtAuthSpec:
        issuers = [p.issuer for p in self.providers]
        if len(set(issuers)) != len(issuers):
            raise ValueError("each provider's issuer must be different")
        return self


class ExternalAuthSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("self.requestHeaders.all(h, !h.matches('" + NOT_SENT_TO_AUTH.pattern + "'))",
         "requestHeaders cannot name hop-by-hop headers, Upgrade, Connection, Host, "
         "Sec-WebSocket-* or X-Forwarded-* (the proxy sets X-Forwarded-* itself)"),
        ("!has(self.responseHeaders) || self.responseHeaders.all(h, !h.matches('"
         + NOT_SET_BY_VERIFICATION + "'))",
         "responseHeaders cannot name " + NOT_SET_BY_VERIFICATION_WORDS),
        # double(): an integer written in YAML is a number all the same
        ("double(self.recheckSeconds) == 0.0 || double(self.recheckSeconds) >= 0.5",
         "recheckSeconds is 0 (never) or at least 0.5"),
        ("!has(self.identityHeader) || !self.identityHeader.matches('"
         + NOT_SET_BY_VERIFICATION + "')",
         "identityHeader cannot name " + NOT_SET_BY_VERIFICATION_WORDS),
    ))

    url: HttpUrl
    """The application's auth endpoint (http or https). Each handshake becomes a plain
    GET to it with requestHeaders and X-Forwarded-Method, -Proto, -Host, -Uri, -For and
    X-Original-URL: 2xx allows, 401/403 is passed to the client (with WWW-Authenticate,
    Location and the body), anything else answers 503."""
    request_headers: Annotated[list[HeaderName], Field(max_length=32)] = [
        "Cookie", "Authorization"]
    """The handshake's headers the auth call carries. With hideCredentials (the
    default) they are not forwarded upstream."""
    response_headers: Annotated[list[HeaderName], Field(max_length=32)] = []
    """Headers of a 2xx answer passed to the upstream; a client's own copies of them
    (under any spelling) are always removed first."""
    identity_header: HeaderName | None = None
    """A header of the 2xx answer naming who the session belongs to: per-consumer limits,
    ConsistentHash on Consumer, X-Consumer-Username and the access log use it. An allow
    without it answers 503."""
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    """How long a handshake waits for the auth server; then 503."""
    cache_seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0
    """Remember an allow this long (never longer than the answer's Cache-Control
    max-age; never a refusal or an error), for exactly the same forwarded headers. 0:
    ask every time."""
    recheck_seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0
    """Ask again for each live session this often (spread out; at least 0.5); a 401/403
    closes it with 1008 "credential revoked". 0: never."""
    ca_secret_ref: SecretRef | None = None
    """For an https url with a private CA: a Secret whose 'ca.crt' holds the CA
    certificates to trust. Default: the system's roots."""

    @model_validator(mode="after")
    def _sendable(self) -> ExternalAuthSpec:
        for name in self.request_headers:
            if NOT_SENT_TO_AUTH.match(name):
                raise ValueError(
                    f"requestHeaders cannot name {name!r}: hop-by-hop headers, Upgrade, "
                    "Connection, Host, Sec-WebSocket-* and X-Forwarded-* never go to an auth "
                    "server (the proxy sets X-Forwarded-* itself)")
        if 0 < self.recheck_seconds < MIN_RECHECK_SECONDS:
            raise ValueError(f"recheckSeconds is 0 (never) or at least {MIN_RECHECK_SECONDS}: "
                             f"{self.recheck_seconds} would ask the auth server about every "
                             "session many times a second")
        for field, names in (("responseHeaders", self.response_headers),
                             ("identityHeader", [self.identity_header or ""])):
            for name in names:
                if re.match(NOT_SET_BY_VERIFICATION, name):
                    raise ValueError(f"{field} cannot name {name!r}: not "
                                     + NOT_SET_BY_VERIFICATION_WORDS)
        return self


AuthMethod = Literal["KeyAuth", "BasicAuth", "JWT"]
RouteAuthMethod = Literal["KeyAuth", "BasicAuth", "JWT", "External"]


class AuthSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("self.mode == 'None' || size(self.methods) > 0",
         "this auth mode needs at least one entry in methods (e.g. [KeyAuth])"),
        ("!('External' in self.methods) || has(self.external)",
         "method External needs external: the auth endpoint's url"),
        ("!has(self.external) || 'External' in self.methods",
         "external applies to method External only: add External to methods"),
        ("!('External' in self.methods) || self.mode != 'FirstMessage'",
         "External reads the handshake's headers: it needs mode Handshake"),
    ))

    mode: Literal["Handshake", "FirstMessage", "None"] = "Handshake"
    """Handshake: the credential comes with the upgrade request (401/403 before any
    upgrade). FirstMessage: the proxy upgrades, and the first message must be
    {"type": "auth", ...} with a credential (close 4401 otherwise). None: a public route."""
    methods: list[RouteAuthMethod] = ["KeyAuth"]
    """The accepted credential types, tried in this order; the first one presented
    decides. External (the application's own auth endpoint) always decides when it is
    reached: list it last."""
    key_auth: KeyAuthSpec = KeyAuthSpec()
    """Where an API key may come from."""
    jwt: JwtAuthSpec = JwtAuthSpec()
    """JWT options: WsConsumers' JWT credentials and OpenID Connect providers."""
    external: ExternalAuthSpec | None = None
    """Method External: the application's own auth endpoint (forward auth)."""
    first_message_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    """FirstMessage mode: how long the proxy waits for the auth message."""
    hide_credentials: bool = True
    """Remove every place the route's methods read a credential from (the key header,
    query parameter and cookie, Authorization, access_token) before forwarding, not only
    the one that authenticated. A credential subprotocol entry is never forwarded."""
    allowed_consumers: AllowedConsumersSpec = AllowedConsumersSpec()
    """Which consumers of the namespace may use the route (403 for the others)."""

    @model_validator(mode="after")
    def _methods_for_mode(self) -> AuthSpec:
        if self.mode != "None" and not self.methods:
            raise ValueError(
                f"mode {self.mode} needs at least one entry in methods (e.g. [KeyAuth])")
        if "External" in self.methods and self.external is None:
            raise ValueError("method External needs external: the auth endpoint's url")
        if self.external is not None and "External" not in self.methods:
            raise ValueError("external applies to method External only: add External to "
                             "methods")
        if "External" in self.methods and self.mode == "FirstMessage":
            raise ValueError("External reads the handshake's headers: it needs mode Handshake")
        k = self.key_auth
        if "KeyAuth" in self.methods and not (k.header or k.query or k.cookie or k.subprotocol):
            raise ValueError(
                "KeyAuth needs at least one source: keyAuth.header, .query, .cookie or .subprotocol"
            )
        return self


class LimitsSpec(_Spec):
    max_connections: Annotated[int, Field(ge=1)] | None = None
    """Live sessions on the route; beyond it handshakes get 503. Counted across every
    proxy when the proxies share a Redis (--limits-redis-url), else per proxy."""
    max_connections_per_consumer: Annotated[int, Field(ge=1)] | None = None
    """Live sessions of one consumer on the route; beyond it handshakes get 429. Counted
    across every proxy when the proxies share a Redis (--limits-redis-url), else per
    proxy."""
    max_message_bytes: Annotated[int, Field(ge=1)] | None = None
    """A message (all its fragments, as sent: compressed when permessage-deflate is on)
    larger than this closes the session with 1009."""
    idle_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    """No frame in either direction for this long closes the session with 1001."""
    messages_per_second: Annotated[float, Field(gt=0)] | None = None
    """Client messages beyond this rate (one second's burst) are not forwarded and the
    session is closed with 1008."""


class TlsSpec(_Spec):
    secret_name: Annotated[str, Field(min_length=1, max_length=253)]
    """A kubernetes.io/tls Secret (tls.crt, tls.key) in the route's namespace, served for
    the route's hosts (chosen by SNI) on the proxy's TLS listener."""


class WsRouteSpec(_Spec):
    model_config = ConfigDict(json_schema_extra=cel(
        ("!has(self.tls) || (has(self.hosts) && size(self.hosts) > 0)",
         "tls needs hosts: the certificate is chosen by the host name the client asks for"),
    ))

    hosts: list[Hostname] = []
    """Host names the route serves ('*.' wildcards allowed); empty: every host."""
    tls: TlsSpec | None = None
    """A certificate for the hosts, for wss://."""
    paths: Annotated[list[PathSpec], Field(min_length=1)]
    """The paths the route serves (at least one)."""
    backend: BackendSpec
    """Where accepted sessions go."""
    auth: AuthSpec
    """How handshakes authenticate. Required: a public route says mode: None."""
    allowed_origins: list[Origin] = []
    """When set, a handshake whose Origin header is not listed (scheme://host[:port]) gets
    403: set it whenever browsers connect."""
    limits: LimitsSpec = LimitsSpec()
    """Connection, message and rate limits."""
    on_credential_revoked: Literal["Close", "Keep"] = "Close"
    """Close: live sessions of a consumer that was deleted, disabled, re-keyed or is no
    longer allowed, or that an External recheck refused, are closed with 1008
    "credential revoked". Keep: they run on; only new handshakes are refused."""
    on_credential_expired: Literal["Close", "Keep"] = "Close"
    """Close: a session ends with 1008 "credential expired" when its credential does: a
    JWT's exp (plus jwt.clockSkewSeconds), an External answer's Cache-Control max-age or
    Expires (unless a recheck renewed it). In FirstMessage mode a client renews it by
    sending a new auth message. Keep: sessions outlive their credential."""

    @model_validator(mode="after")
    def _tls_needs_hosts(self) -> WsRouteSpec:
        if self.tls is not None and not self.hosts:
            raise ValueError("tls needs hosts: the certificate is chosen by the host name "
                             "the client asks for (SNI)")
        return self


class CredentialSpec(_Spec):
    type: AuthMethod
    """KeyAuth: the Secret holds 'key'. BasicAuth: 'username' and 'password'. JWT:
    'issuer' (the token's iss), 'algorithm' (HS256, RS256 or ES256; default HS256) and
    'secret' (HS256) or 'publicKey' (PEM)."""
    secret_ref: SecretRef
    """The Secret holding the credential: same namespace, labelled
    wsgate.io/credential: "true"."""


class ConsumerLimitsSpec(_Spec):
    max_connections: Annotated[int, Field(ge=1)] | None = None
    """Live sessions of this consumer on all routes together; beyond it handshakes get
    429. Counted across every proxy when the proxies share a Redis (--limits-redis-url),
    else per proxy."""


class WsConsumerSpec(_Spec):
    username: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """The name upstreams see (X-Consumer-Username); default: the object's name."""
    disabled: bool = False
    """A disabled consumer authenticates nobody, and its live sessions are closed."""
    credentials: list[CredentialSpec] = []
    """The consumer's credentials, each in a Secret."""
    limits: ConsumerLimitsSpec = ConsumerLimitsSpec()
    """Limits on the consumer, whatever the route."""
