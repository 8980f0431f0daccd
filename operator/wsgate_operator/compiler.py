"""The compiler: Kubernetes objects in, the proxy's GatewayConfig and per-object problems out.

A pure function, shared by the operator and standalone mode. A broken object never
breaks the others: it is reported as a Problem on itself and left out (or compiled
without what it lacks), and everything else flows on. Objects of any shape may
arrive (hand-written manifests are not checked by an API server): ``_well_formed``
holds every object to the shape the build reads before anything else looks at it,
so the compiler reports malformed input and never raises on it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel, ValidationError

from wsgate_proxy import config as cfg
from wsgate_proxy.passwords import hash_password

from .resources import CREDENTIAL_LABEL, SecretRef, WsConsumerSpec, WsRouteSpec

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_NAMESPACE = "default"

K8sObject = Mapping[str, Any]
SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: K8sObject) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj.get("kind", "?")),
            namespace=str(meta.get("namespace") or DEFAULT_NAMESPACE),
            name=str(meta.get("name", "")),
        )


@dataclass(frozen=True)
class Problem:
    """Something wrong with one object, phrased so a person can act on it.

    ``reason`` is a CamelCase word (it becomes a condition reason); ``invalid``
    marks problems where the object itself is malformed and was left out, as
    opposed to references that do not resolve (yet).
    """

    ref: ObjectRef
    field: str
    reason: str
    message: str
    invalid: bool = False

    def __str__(self) -> str:
        where = f"{self.ref}: {self.field}" if self.field else str(self.ref)
        return f"{where}: {self.message}"


@dataclass
class Snapshot:
    """The objects the compiler reads, as the Kubernetes API returns them."""

    routes: list[K8sObject] = field(default_factory=list)
    consumers: list[K8sObject] = field(default_factory=list)
    secrets: list[K8sObject] = field(default_factory=list)
    services: list[K8sObject] = field(default_factory=list)
    endpoint_slices: list[K8sObject] = field(default_factory=list)

    def add(self, obj: K8sObject) -> bool:
        """File an object under its kind; False for kinds the compiler does not read."""
        attr = SNAPSHOT_KINDS.get(str(obj.get("kind"))) if isinstance(obj, Mapping) else None
        if attr is None:
            return False
        getattr(self, attr).append(obj)
        return True

    @classmethod
    def of(cls, objects: Iterable[K8sObject]) -> Snapshot:
        snapshot = cls()
        for obj in objects:
            snapshot.add(obj)
        return snapshot


# kind -> the Snapshot list that holds it
SNAPSHOT_KINDS = {
    "WsRoute": "routes",
    "WsConsumer": "consumers",
    "Secret": "secrets",
    "Service": "services",
    "EndpointSlice": "endpoint_slices",
}


@dataclass
class Compiled:
    config: cfg.GatewayConfig
    problems: list[Problem]
    # Ready endpoints per compiled route, for status and summaries.
    route_endpoints: dict[ObjectRef, int] = field(default_factory=dict)

    @functools.cached_property
    def _problems_by_ref(self) -> dict[ObjectRef, list[Problem]]:
        by_ref: dict[ObjectRef, list[Problem]] = defaultdict(list)
        for problem in self.problems:
            by_ref[problem.ref].append(problem)
        return by_ref

    @functools.cached_property
    def _consumers(self) -> dict[tuple[str, str], cfg.Consumer]:
        return {(c.namespace, c.name): c for c in self.config.consumers}

    def problems_of(self, ref: ObjectRef) -> list[Problem]:
        return self._problems_by_ref.get(ref, [])

    def consumer(self, ref: ObjectRef) -> cfg.Consumer | None:
        """The compiled consumer of a WsConsumer (None when it was left out)."""
        return self._consumers.get((ref.namespace, ref.name))


def compile_snapshot(snapshot: Snapshot) -> Compiled:
    problems: list[Problem] = []
    snapshot = _well_formed(snapshot, problems)
    secrets = _index(snapshot.secrets)
    services = _index(snapshot.services)
    slices = _slices_by_service(snapshot.endpoint_slices)

    consumer_specs = _parse_all(snapshot.consumers, WsConsumerSpec, problems)
    consumers = _compile_consumers(consumer_specs, secrets, problems)

    routes: list[cfg.Route] = []
    route_endpoints: dict[ObjectRef, int] = {}
    certificates: dict[tuple[str, str], cfg.Certificate] = {}
    for ref, obj, spec in _parse_all(snapshot.routes, WsRouteSpec, problems):
        try:
            route = _compile_route(ref, obj, spec, consumer_specs, services, slices, secrets,
                                   problems)
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            problems.append(_uncompilable(ref, exc))
            continue
        routes.append(route)
        route_endpoints[ref] = len(route.backend.endpoints)
        if spec.tls is not None:
            _add_certificate(ref, spec, secrets, certificates, problems)

    return Compiled(
        config=cfg.GatewayConfig.build(routes, consumers, list(certificates.values())),
        problems=problems,
        route_endpoints=route_endpoints,
    )


# --- shapes ------------------------------------------------------------------


def _uncompilable(ref: ObjectRef, exc: Exception, where: str = "") -> Problem:
    """The last line of defence: what ``_well_formed`` did not foresee still becomes a
    problem on its object, never an exception out of the compiler."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return Problem(ref, where, "InvalidSpec", f"cannot be compiled: {detail}", invalid=True)


def _well_formed(snapshot: Snapshot, problems: list[Problem]) -> Snapshot:
    """The snapshot with every object held to the shape the build reads.

    An object whose metadata is unusable (not a mapping, no name, a non-integer
    generation, labels that are not strings) is left out with a problem on it; within
    Secrets, Services and EndpointSlices, a malformed entry (a non-string value, a port
    outside 1-65535, ports that are not a list) is dropped with a problem naming it,
    and the rest of the object is kept. A second object of the same kind, namespace
    and name is left out.
    """
    clean = Snapshot()
    for attr in SNAPSHOT_KINDS.values():
        seen: set[ObjectRef] = set()
        for obj in getattr(snapshot, attr):
            checked = _checked_object(obj, problems)
            if checked is None:
                continue
            ref = ObjectRef.of(checked)
            if ref in seen:
                problems.append(Problem(ref, "metadata.name", "Duplicate",
                                        "is defined more than once; only the first is used",
                                        invalid=True))
                continue
            seen.add(ref)
            getattr(clean, attr).append(checked)
    return clean


def _checked_object(obj: object, problems: list[Problem]) -> K8sObject | None:
    if not isinstance(obj, Mapping):
        problems.append(Problem(ObjectRef("?", DEFAULT_NAMESPACE, "?"), "", "InvalidObject",
                                f"is not a Kubernetes object (a mapping) but {_kind_of(obj)}",
                                invalid=True))
        return None
    kind = obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ref = ObjectRef(str(kind), DEFAULT_NAMESPACE, name if isinstance(name, str) else "?")

    def bad(field: str, message: str) -> None:
        problems.append(Problem(ref, field, "InvalidObject", message, invalid=True))

    if not isinstance(meta, Mapping):
        bad("metadata", "must be a mapping with a name")
        return None
    if not isinstance(name, str) or not name:
        bad("metadata.name", "must be a non-empty string")
        return None
    namespace = meta.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and namespace):
        bad("metadata.namespace", "must be a non-empty string")
        return None
    ref = ObjectRef.of(obj)
    generation = meta.get("generation")
    if generation is not None and not (_is_int(generation) and int(generation) >= 0):
        bad("metadata.generation", f"must be a non-negative integer, not {generation!r}")
        return None
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        bad("metadata.labels", "must map strings to strings")
        return None
    fixed = {**obj, "metadata": {**meta, "labels": dict(labels or {})}}
    if kind == "Secret":
        return _checked_secret(fixed, bad)
    if kind == "Service":
        return _checked_service(fixed, bad)
    if kind == "EndpointSlice":
        return _checked_slice(fixed, bad)
    return fixed


def _checked_secret(obj: dict[str, Any], bad: Any) -> K8sObject:
    for section, what in (("data", "a base64 string"), ("stringData", "a string")):
        values = obj.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            bad(section, "must map keys to values")
            obj[section] = {}
            continue
        kept = {}
        for key, value in values.items():
            if isinstance(key, str) and isinstance(value, str):
                kept[key] = value
            else:
                bad(f"{section}.{key}", f"must be {what}, not {_kind_of(value)}")
        obj[section] = kept
    return obj


def _checked_service(obj: dict[str, Any], bad: Any) -> K8sObject:
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        if spec is not None:
            bad("spec", "must be a mapping")
        return {**obj, "spec": {"ports": []}}
    ports = spec.get("ports")
    if ports is None:
        ports = []
    elif not isinstance(ports, list):
        bad("spec.ports", f"must be a list of ports, not {_kind_of(ports)}")
        ports = []
    kept = []
    for i, port in enumerate(ports):
        if _port_problem(port, f"spec.ports[{i}]", bad, targets=True):
            continue
        kept.append(port)
    return {**obj, "spec": {**spec, "ports": kept}}


def _checked_slice(obj: dict[str, Any], bad: Any) -> K8sObject:
    address_type = obj.get("addressType", "IPv4")
    if not isinstance(address_type, str):
        bad("addressType", "must be a string (IPv4, IPv6 or FQDN)")
        address_type = "invalid"
    ports = obj.get("ports")
    if ports is not None and not isinstance(ports, list):
        bad("ports", f"must be a list, not {_kind_of(ports)}")
        ports = []
    kept_ports = [p for i, p in enumerate(ports or [])
                  if not _port_problem(p, f"ports[{i}]", bad, targets=False)]
    endpoints = obj.get("endpoints")
    if endpoints is not None and not isinstance(endpoints, list):
        bad("endpoints", f"must be a list, not {_kind_of(endpoints)}")
        endpoints = []
    kept_endpoints = []
    for i, ep in enumerate(endpoints or []):
        where = f"endpoints[{i}]"
        if not isinstance(ep, Mapping):
            bad(where, "must be a mapping")
            continue
        addresses = ep.get("addresses")
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and 0 < len(a) <= 253 for a in addresses):
            bad(f"{where}.addresses", "must be a list of addresses")
            continue
        conditions = ep.get("conditions")
        if conditions is not None and not (isinstance(conditions, Mapping) and all(
                v is None or isinstance(v, bool) for v in conditions.values())):
            bad(f"{where}.conditions", "must map conditions to true or false")
            continue
        kept_endpoints.append(ep)
    return {**obj, "addressType": address_type, "ports": kept_ports,
            "endpoints": kept_endpoints}


def _port_problem(port: object, where: str, bad: Any, *, targets: bool) -> bool:
    """Whether a Service or EndpointSlice port entry is malformed (and reported)."""
    if not isinstance(port, Mapping):
        bad(where, f"must be a mapping with a port, not {_kind_of(port)}")
        return True
    number = port.get("port")
    if (number is not None or targets) and not (
            _is_int(number, strings=False) and 1 <= int(number) <= 65535):  # type: ignore[arg-type]
        bad(f"{where}.port", f"must be a port number (1-65535), not {number!r}")
        return True
    name = port.get("name")
    if name is not None and not isinstance(name, str):
        bad(f"{where}.name", "must be a string")
        return True
    return False


def _is_int(value: object, *, strings: bool = True) -> bool:
    """An integer (booleans are not), or with ``strings`` its decimal digits too."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return strings and isinstance(value, str) and value.isdigit() and value.isascii()


def _kind_of(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number",
             float: "a number", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# --- parsing -----------------------------------------------------------------


def _parse_all(
    objects: Iterable[K8sObject], model: type[SpecT], problems: list[Problem]
) -> list[tuple[ObjectRef, K8sObject, SpecT]]:
    parsed = []
    for obj in objects:
        ref = ObjectRef.of(obj)
        try:
            spec = model.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            problems.extend(_validation_problems(ref, exc))
            continue
        parsed.append((ref, obj, spec))
    return parsed


def _validation_problems(ref: ObjectRef, exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = "spec"
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif not _is_type_tag(part):
                path += f".{part}"
        message = error["msg"]
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "extra_forbidden":
            message = "is not a known field (check its spelling and case)"
        problems.append(Problem(ref, path, "InvalidSpec", message, invalid=True))
    return problems


def _is_type_tag(part: str) -> bool:
    """Union members and validators appear in pydantic's error locations as tags
    ('int', 'constrained-str', 'function-after[...]'); they are not fields."""
    return part in {"int", "str", "float", "bool"} or "-" in part or "[" in part


# --- consumers ---------------------------------------------------------------

# What each credential type reads from its Secret: required keys, optional keys.
SECRET_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "KeyAuth": (("key",), ()),
    "BasicAuth": (("username", "password"), ()),
    "JWT": (("issuer",), ("algorithm", "secret", "publicKey")),
}
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")

Credential = cfg.KeyCredential | cfg.BasicCredential | cfg.JwtCredential


def _compile_consumers(
    specs: list[tuple[ObjectRef, K8sObject, WsConsumerSpec]],
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> list[cfg.Consumer]:
    credentials: dict[ObjectRef, list[Credential]] = {}
    # What identifies a credential within a namespace: a key's digest, a Basic user
    # name, a JWT issuer. Two consumers with the same one cannot say who connects.
    owners: dict[tuple[str, str, str], list[ObjectRef]] = defaultdict(list)
    for ref, _obj, spec in specs:
        if spec.disabled:
            continue  # a disabled consumer authenticates nobody: it is left out whole
        found: list[Credential] = []
        for i, cred in enumerate(spec.credentials):
            where = f"spec.credentials[{i}].secretRef"
            values = _secret_values(ref, where, cred.secret_ref.name, cred.type, secrets,
                                    problems)
            if values is None:
                continue
            try:
                credential = _credential(ref, where, cred.type, cred.secret_ref.name, values,
                                         problems)
            except (ValueError, TypeError) as exc:
                problems.append(_uncompilable(ref, exc, where))
                continue
            if credential is None or _identifier(credential) in map(_identifier, found):
                continue
            found.append(credential)
            owners[(ref.namespace, *_identifier(credential))].append(ref)
        credentials[ref] = found

    for (_ns, kind, ident), refs in owners.items():
        if len(refs) < 2:
            continue
        for ref in refs:
            others = ", ".join(r.name for r in refs if r != ref)
            problems.append(
                Problem(
                    ref,
                    "spec.credentials",
                    "DuplicateCredential",
                    f"its {_DESCRIBED[kind]} is also that of WsConsumer {others} in this "
                    "namespace; it is refused for all of them until each has its own",
                )
            )
            credentials[ref] = [c for c in credentials[ref] if _identifier(c) != (kind, ident)]

    return [
        cfg.Consumer(
            namespace=ref.namespace,
            name=ref.name,
            username=spec.username or ref.name,
            keys=tuple(c for c in credentials[ref] if isinstance(c, cfg.KeyCredential)),
            basic=tuple(c for c in credentials[ref] if isinstance(c, cfg.BasicCredential)),
            jwt=tuple(c for c in credentials[ref] if isinstance(c, cfg.JwtCredential)),
            max_connections=spec.limits.max_connections,
        )
        for ref, _obj, spec in specs
        if ref in credentials
    ]


_DESCRIBED = {"key": "KeyAuth key", "basic": "BasicAuth user name", "jwt": "JWT issuer"}


def _identifier(credential: Credential) -> tuple[str, str]:
    if isinstance(credential, cfg.KeyCredential):
        return ("key", credential.sha256)
    if isinstance(credential, cfg.BasicCredential):
        return ("basic", credential.username)
    return ("jwt", credential.issuer)


def _credential(
    ref: ObjectRef,
    where: str,
    kind: str,
    secret_name: str,
    values: dict[str, str],
    problems: list[Problem],
) -> Credential | None:
    cred_id = f"secret/{secret_name}"
    if kind == "KeyAuth":
        return cfg.KeyCredential(id=cred_id, sha256=hashlib.sha256(values["key"].encode())
                                 .hexdigest())
    if kind == "BasicAuth":
        # A salt of its own per credential, derived rather than random so that the same
        # objects always compile to the same config (and the same version).
        salt = hashlib.sha256(f"{ref.namespace}/{secret_name}/{values['username']}".encode())
        return cfg.BasicCredential(
            id=cred_id, username=values["username"],
            password_hash=_password_hash(values["password"], salt.digest()[:16]),
        )
    algorithm = values.get("algorithm", "HS256")
    secret_where = f"Secret {ref.namespace}/{secret_name}"
    if algorithm not in JWT_ALGORITHMS:
        problems.append(Problem(ref, where, "InvalidCredential",
                                f"{secret_where}: algorithm {algorithm!r} is not one of "
                                f"{', '.join(JWT_ALGORITHMS)}"))
        return None
    needed = "secret" if algorithm == "HS256" else "publicKey"
    key = values.get(needed)
    if not key:
        problems.append(Problem(ref, where, "SecretKeyMissing",
                                f"{secret_where} has no non-empty key {needed!r}, which "
                                f"algorithm {algorithm} needs"))
        return None
    if algorithm != "HS256" and (error := _public_key_problem(algorithm, key)):
        problems.append(Problem(ref, where, "InvalidCredential", f"{secret_where}: {error}"))
        return None
    return cfg.JwtCredential(id=cred_id, issuer=values["issuer"], algorithm=algorithm, key=key)


@functools.lru_cache(maxsize=100_000)
def _password_hash(password: str, salt: bytes) -> str:
    # PBKDF2 is slow on purpose: remember what was hashed, so a recompile (every
    # change of any object, in the operator) does not hash every password again.
    return hash_password(password, salt)


def _public_key_problem(algorithm: str, pem: str) -> str | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        return "publicKey is not a PEM public key ('-----BEGIN PUBLIC KEY-----...')"
    expected = rsa.RSAPublicKey if algorithm == "RS256" else ec.EllipticCurvePublicKey
    if not isinstance(key, expected):
        kind = "an RSA" if algorithm == "RS256" else "an EC (P-256)"
        return f"algorithm {algorithm} needs {kind} public key"
    return None


def _secret_values(
    ref: ObjectRef,
    where: str,
    secret_name: str,
    kind: str,
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> dict[str, str] | None:
    """The Secret's values this credential type reads, or None (and a problem)."""
    required, optional = SECRET_KEYS[kind]
    data = _read_secret(ref, where, secret_name, required, secrets, problems, credential=True)
    if data is None:
        return None
    return {k: data[k] for k in (*required, *optional) if data.get(k)}


def _read_secret(
    ref: ObjectRef,
    where: str,
    secret_name: str,
    required: tuple[str, ...],
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
    *,
    credential: bool,
) -> dict[str, str] | None:
    """A Secret's decoded values, or None with the problem reported: not found, not
    labelled (credentials only), or lacking a required key."""
    name = f"Secret {ref.namespace}/{secret_name}"
    secret = secrets.get((ref.namespace, secret_name))
    if secret is None:
        hint = (f"; create it with {' and '.join(repr(k) for k in required)} and the label "
                f"{CREDENTIAL_LABEL}: \"true\"" if credential else "")
        problems.append(Problem(ref, where, "SecretNotFound", f"{name} does not exist{hint}"))
        return None
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if credential and labels.get(CREDENTIAL_LABEL) != "true":
        problems.append(Problem(ref, where, "SecretNotLabelled",
                                f"{name} lacks the label {CREDENTIAL_LABEL}: \"true\" that "
                                "marks it as a wsgate credential"))
        return None
    data = _secret_data(secret)
    missing = " or ".join(repr(k) for k in required if not data.get(k))
    if missing:
        message = (f"has no non-empty key {missing} (set it under stringData or data)"
                   if credential else f"has no {missing}")
        problems.append(Problem(ref, where, "SecretKeyMissing", f"{name} {message}"))
        return None
    return data


def _secret_data(secret: K8sObject) -> dict[str, str]:
    """The Secret's values, decoded; stringData wins over data, as on the API server."""
    values: dict[str, str] = {}
    for k, v in (secret.get("data") or {}).items():
        try:
            values[k] = base64.b64decode(v or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
    for k, v in (secret.get("stringData") or {}).items():
        values[k] = str(v)
    return values


# --- routes ------------------------------------------------------------------


def _compile_route(
    ref: ObjectRef,
    obj: K8sObject,
    spec: WsRouteSpec,
    consumer_specs: list[tuple[ObjectRef, K8sObject, WsConsumerSpec]],
    services: dict[tuple[str, str], K8sObject],
    slices: dict[tuple[str, str], list[K8sObject]],
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> cfg.Route:
    backend = spec.backend
    endpoints = _resolve_endpoints(ref, backend.service.name, backend.service.port,
                                   services, slices, problems)
    allowed = spec.auth.allowed_consumers
    allowed_names: tuple[str, ...] | None = None
    if allowed.names or allowed.selector is not None:
        names = set(allowed.names)
        if allowed.selector is not None:
            names.update(
                c_ref.name
                for c_ref, c_obj, _ in consumer_specs
                if c_ref.namespace == ref.namespace
                and allowed.selector.matches((c_obj.get("metadata") or {}).get("labels") or {})
            )
        allowed_names = tuple(sorted(names))

    return cfg.Route(
        namespace=ref.namespace,
        name=ref.name,
        generation=int((obj.get("metadata") or {}).get("generation") or 0),
        hosts=tuple(spec.hosts),
        paths=tuple(cfg.PathMatch(type=p.type, value=p.value) for p in spec.paths),
        backend=cfg.Backend(
            service=backend.service.name,
            endpoints=tuple(endpoints),
            tls=_upstream_tls(ref, spec, secrets, problems),
            path_rewrite=backend.path,
            load_balancing=cfg.LoadBalancing(
                algorithm=backend.load_balancing.algorithm,
                hash_on=backend.load_balancing.hash_on,
                hash_header=backend.load_balancing.header,
            ),
            connect_timeout_seconds=backend.connect_timeout_seconds,
            retries=backend.retries,
        ),
        auth=_route_auth(ref, spec, allowed_names, secrets, problems),
        allowed_origins=tuple(spec.allowed_origins),
        limits=cfg.Limits(**spec.limits.model_dump()),
        on_credential_revoked=spec.on_credential_revoked,
        on_credential_expired=spec.on_credential_expired,
    )


def _route_auth(
    ref: ObjectRef,
    spec: WsRouteSpec,
    allowed_names: tuple[str, ...] | None,
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> cfg.RouteAuth:
    """spec.auth, with the CA Secrets of the External auth server and the identity
    providers read (a CA that is named but missing trusts nothing: those calls fail)."""
    auth = spec.auth
    external = None
    if auth.external is not None:
        e = auth.external
        external = cfg.ExternalAuth(
            url=e.url, request_headers=tuple(e.request_headers),
            response_headers=tuple(e.response_headers), identity_header=e.identity_header,
            timeout_seconds=e.timeout_seconds, cache_seconds=e.cache_seconds,
            recheck_seconds=e.recheck_seconds,
            ca_pem=_ca(ref, "spec.auth.external.caSecretRef", e.ca_secret_ref, secrets, problems),
        )
    providers = tuple(
        cfg.JwtProvider(
            issuer=p.issuer, jwks_uri=p.jwks_uri, audiences=tuple(p.audiences),
            required_claims=tuple(cfg.ClaimRequirement(name=c.name, values=tuple(c.values))
                                  for c in p.required_claims),
            claims_to_headers=tuple(cfg.ClaimHeader(claim=c.claim, header=c.header)
                                    for c in p.claims_to_headers),
            identity_claim=p.identity_claim,
            ca_pem=_ca(ref, f"spec.auth.jwt.providers[{i}].caSecretRef", p.ca_secret_ref,
                       secrets, problems),
        )
        for i, p in enumerate(auth.jwt.providers)
    )
    return cfg.RouteAuth(
        mode=auth.mode,
        methods=tuple(auth.methods),
        key_auth=cfg.KeyAuthSources(**auth.key_auth.model_dump()),
        hide_credentials=auth.hide_credentials,
        allowed_consumers=allowed_names,
        jwt=cfg.JwtOptions(audience=auth.jwt.audience, providers=providers,
                           clock_skew_seconds=auth.jwt.clock_skew_seconds,
                           cookie=auth.jwt.cookie),
        external=external,
        first_message_timeout_seconds=auth.first_message_timeout_seconds,
    )


def _ca(ref: ObjectRef, where: str, secret_ref: SecretRef | None,
        secrets: dict[tuple[str, str], K8sObject], problems: list[Problem]) -> str | None:
    """The 'ca.crt' of a referenced Secret; None when none is named; a CA nothing is
    signed by when the Secret is missing or unusable (and a problem says so)."""
    if secret_ref is None:
        return None
    values = _pem_values(ref, where, secret_ref.name, ("ca.crt",), secrets, problems)
    return _UNUSABLE_CA if values is None else values["ca.crt"]


def _add_certificate(
    ref: ObjectRef,
    spec: WsRouteSpec,
    secrets: dict[tuple[str, str], K8sObject],
    certificates: dict[tuple[str, str], cfg.Certificate],
    problems: list[Problem],
) -> None:
    """The route's serving certificate, for its hosts (merged with other routes naming it)."""
    assert spec.tls is not None
    name = spec.tls.secret_name
    values = _pem_values(ref, "spec.tls.secretName", name, ("tls.crt", "tls.key"), secrets,
                         problems)
    if values is None:
        return
    key = (ref.namespace, name)
    hosts = set(spec.hosts) | set(certificates[key].hosts if key in certificates else ())
    certificates[key] = cfg.Certificate(
        namespace=ref.namespace, name=name, hosts=tuple(sorted(hosts)),
        cert_pem=values["tls.crt"], key_pem=values["tls.key"],
    )


def _upstream_tls(
    ref: ObjectRef,
    spec: WsRouteSpec,
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> cfg.UpstreamTls | None:
    tls = spec.backend.tls
    if tls is None:
        return None
    server_name = tls.server_name or f"{spec.backend.service.name}.{ref.namespace}.svc"
    ca = _ca(ref, "spec.backend.tls.caSecretRef", tls.ca_secret_ref, secrets, problems)
    return cfg.UpstreamTls(server_name=server_name, ca_pem=ca)


# A CA that is named but cannot be read must not fall back to trusting the system's roots:
# such a backend gets a CA nothing is signed by, and its handshakes fail (502).
_UNUSABLE_CA = "unusable"


def _pem_values(
    ref: ObjectRef,
    where: str,
    secret_name: str,
    keys: tuple[str, ...],
    secrets: dict[tuple[str, str], K8sObject],
    problems: list[Problem],
) -> dict[str, str] | None:
    """PEM values of a Secret (certificates need no credential label), each checked."""
    data = _read_secret(ref, where, secret_name, keys, secrets, problems, credential=False)
    if data is None:
        return None
    for key in keys:
        try:
            if key == "tls.key":
                serialization.load_pem_private_key(data[key].encode(), password=None)
            else:
                x509.load_pem_x509_certificates(data[key].encode())
        except (ValueError, TypeError):
            what = "a PEM private key" if key == "tls.key" else "PEM certificates"
            problems.append(Problem(ref, where, "InvalidCertificate",
                                    f"Secret {ref.namespace}/{secret_name}: {key!r} is not {what}"))
            return None
    return {k: data[k] for k in keys}


def _resolve_endpoints(
    ref: ObjectRef,
    service_name: str,
    port: int | str,
    services: dict[tuple[str, str], K8sObject],
    slices: dict[tuple[str, str], list[K8sObject]],
    problems: list[Problem],
) -> list[cfg.Endpoint]:
    """Ready endpoints of the Service port, read from its EndpointSlices as kube-proxy does."""
    where = "spec.backend.service"
    service = services.get((ref.namespace, service_name))
    if service is None:
        problems.append(
            Problem(
                ref, f"{where}.name", "BackendNotFound",
                f"Service {ref.namespace}/{service_name} does not exist; handshakes answer 503 "
                "until it does",
            )
        )
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
        problems.append(
            Problem(
                ref, f"{where}.port", "PortNotFound",
                f"Service {ref.namespace}/{service_name} has no port {port!r}; its ports: {known}",
            )
        )
        return []
    port_name = match.get("name") or ""
    endpoints: dict[tuple[str, int], cfg.Endpoint] = {}
    for eps in slices.get((ref.namespace, service_name), []):
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


def _index(objects: Iterable[K8sObject]) -> dict[tuple[str, str], K8sObject]:
    index = {}
    for obj in objects:
        ref = ObjectRef.of(obj)
        index[(ref.namespace, ref.name)] = obj
    return index


def _slices_by_service(objects: Iterable[K8sObject]) -> dict[tuple[str, str], list[K8sObject]]:
    by_service: dict[tuple[str, str], list[K8sObject]] = defaultdict(list)
    for obj in objects:
        ref = ObjectRef.of(obj)
        service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            by_service[(ref.namespace, service)].append(obj)
    return by_service
