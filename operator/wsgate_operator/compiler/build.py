"""The build: the processors, one per source kind, run over one build context, and kept
up to date object by object.

A ``Compiler`` keeps what it compiled for each object and what each compile read (the
build context records it). ``update`` takes the objects that changed and compiles
again only those and what depends on them:

  - a Secret: the consumers and routes that read it (credentials, serving
    certificates, upstream CAs), whether it existed when they read it or not;
  - a consumer: itself; the routes whose label selector now chooses it or no longer
    does; and the consumers that share (or shared) a credential with it, whose
    duplicates are settled again;
  - a Service or EndpointSlice: the endpoints of the Service's ports that routes name,
    and the routes that check the Service's ports;
  - a route: itself, the endpoints it names and the serving certificate it shares.

The result is the same as compiling every object afresh: ``compile_snapshot`` does just
that (a new Compiler, every object), and a property test holds the two to each other.
Order within a build: shapes and indexes first, then consumers (their own credentials,
then duplicates settled across each namespace), routes, endpoints, certificates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from wsgate_proxy import config as cfg

from ..resources import WsConsumerSpec, WsRouteSpec
from . import consumers as consumer_processor
from .backends import service_endpoints
from .compiled import Compiled, ItemKey
from .context import BuildContext, NamespacedName, labels_of
from .objects import DEFAULT_NAMESPACE, SNAPSHOT_KINDS, K8sObject, ObjectRef, Problem, Snapshot
from .routes import compile_route
from .secrets import ServingCertificate, merge_certificates, serving_certificate
from .shapes import SpecT, checked_object, parse_spec, uncompilable

# A credential identifier within a namespace: (namespace, type, identifier).
Owner = tuple[str, str, str]
Changes = Mapping[ObjectRef, K8sObject | None]

_INDEXED = ("Secret", "Service", "EndpointSlice")


@dataclass(frozen=True)
class _RouteResult:
    route: cfg.Route
    certificate: ServingCertificate | None


class Compiler:
    def __init__(self) -> None:
        self.ctx = BuildContext()
        self._inputs: dict[ObjectRef, K8sObject] = {}
        # Problems of a whole snapshot rather than of one object: a second object of the
        # same name, something that is not an object at all.
        self._loose: dict[ObjectRef, list[Problem]] = {}
        # Consumers: parsed specs, the credentials their Secrets give, who holds which.
        self._consumer_specs: dict[ObjectRef, WsConsumerSpec] = {}
        self._found: dict[ObjectRef, tuple[consumer_processor.Credential, ...]] = {}
        self._held: dict[ObjectRef, set[Owner]] = {}
        self._owners: dict[Owner, set[ObjectRef]] = defaultdict(set)
        # Routes: parsed specs, what each compiled to, who names which endpoints and
        # which serving certificate.
        self._route_specs: dict[ObjectRef, WsRouteSpec] = {}
        self._routes: dict[ObjectRef, _RouteResult] = {}
        self._endpoint_users: dict[str, set[ObjectRef]] = defaultdict(set)
        self._endpoint_names: dict[str, tuple[str, str, str]] = {}
        self._certificate_users: dict[NamespacedName, set[ObjectRef]] = defaultdict(set)
        # The config, item by item.
        self.items: dict[str, dict[str, BaseModel]] = {
            "route": {}, "consumer": {}, "certificate": {}, "endpoints": {}}
        # Each item's canonical JSON and digest, and the sum of the digests: the version
        # moves by what changed (config.version_of), nothing is serialised twice.
        self.encoded: dict[ItemKey, tuple[bytes, int]] = {}
        self._digest_sum = 0
        # Since the last result: the items that changed, the objects whose result did.
        self._changed_items: set[ItemKey] = set()
        self._changed_refs: set[ObjectRef] = set()
        # The last result's ready endpoints per route (shared by results: never edited).
        self._route_endpoints: dict[ObjectRef, int] | None = None

    # -- input -----------------------------------------------------------------------
    def load(self, snapshot: Snapshot) -> Compiler:
        """Every object of a snapshot, as given (duplicates and non-objects reported)."""
        self.sync(snapshot)
        return self

    def sync(self, snapshot: Snapshot) -> None:
        """Bring the compiler to a snapshot: what differs from the objects it holds is
        an update (an object body is compared by identity first: the operator's cache
        stores a new body on every change and never edits one), what is missing is
        deleted. Duplicates and non-objects are reported."""
        changes: dict[ObjectRef, K8sObject | None] = {}
        seen: set[ObjectRef] = set()
        loose: dict[ObjectRef, list[Problem]] = {}
        for kind, attr in SNAPSHOT_KINDS.items():
            for obj in getattr(snapshot, attr):
                ref = _key_of(kind, obj)
                if ref is None:  # not an object, or no name: reported, left out
                    stray = BuildContext()
                    checked_object(obj, stray)
                    for problems in stray.problems.values():
                        for problem in problems:
                            loose.setdefault(problem.ref, []).append(problem)
                    continue
                if ref in seen:
                    loose.setdefault(ref, []).append(Problem(
                        ref, "metadata.name", "Duplicate",
                        "is defined more than once; only the first is used", invalid=True))
                    continue
                seen.add(ref)
                if self._inputs.get(ref) is not obj:
                    changes[ref] = obj
        for ref in self._inputs.keys() - seen:
            changes[ref] = None
        self._changed_refs |= {ref for ref in self._loose.keys() | loose.keys()
                               if self._loose.get(ref) != loose.get(ref)}
        self._loose = loose
        self.update(changes)

    def update(self, changes: Changes) -> None:
        """Objects created or changed (their new body) or deleted (None), compiled with
        everything that depends on them."""
        consumers: set[ObjectRef] = set()
        routes: set[ObjectRef] = set()
        endpoints: set[str] = set()
        for ref, obj in changes.items():
            before = self._inputs.get(ref)
            if obj is None:
                if ref not in self._inputs:
                    continue
                del self._inputs[ref]
            else:
                if before is not None and _same_input(before, obj):
                    self._inputs[ref] = obj  # a status written, a resourceVersion moved
                    continue
                self._inputs[ref] = obj
            if ref.kind == "WsConsumer":
                consumers.add(ref)
            elif ref.kind == "WsRoute":
                routes.add(ref)
            elif ref.kind in _INDEXED:
                for dependent in self._file(ref, obj):
                    if dependent.kind == "WsConsumer":
                        consumers.add(dependent)
                    elif dependent.kind == "WsRoute":
                        routes.add(dependent)
                    else:
                        endpoints.add(dependent.name)
        # Consumers sharing a credential identifier with one that changed are settled
        # again, each once, with the holders of each identifier sorted once.
        touched: set[Owner] = set()
        for ref in consumers:
            touched |= self._compile_consumer(ref, routes)
        settle = set(consumers)
        for owner in touched:
            settle |= self._owners.get(owner, set())
        sorted_holders: dict[Owner, list[str]] = {}

        def holders(owner: Owner) -> list[str]:
            if owner not in sorted_holders:
                sorted_holders[owner] = sorted(r.name for r in self._owners.get(owner, ()))
            return sorted_holders[owner]

        for ref in settle:
            self._settle(ref, holders)
        certificates: set[NamespacedName] = set()
        for ref in routes:
            self._compile_route(ref, endpoints, certificates)
        for key in endpoints:
            self._compile_endpoints(key)
        for name in certificates:
            self._merge_certificate(name)

    # -- Secrets, Services, EndpointSlices -------------------------------------------
    def _file(self, ref: ObjectRef, obj: K8sObject | None) -> set[ObjectRef]:
        """Check and file an indexed object; the objects that read it (the endpoints of a
        Service port among them, as ObjectRef("Endpoints", namespace, key))."""
        service_before = self.ctx.service_of_slice(ref)
        checked = None
        if obj is None:
            self.ctx.forget(ref)
        else:
            with self.ctx.compiling(ref):
                checked = checked_object(obj, self.ctx)
        self.ctx.file(ref, checked)
        self._changed_refs.add(ref)
        if ref.kind == "EndpointSlice":
            dependencies = {("Slices", *service) for service in (
                service_before, self.ctx.service_of_slice(ref)) if service is not None}
        else:
            dependencies = {(ref.kind, ref.namespace, ref.name)}
        readers: set[ObjectRef] = set()
        for dependency in dependencies:
            readers |= self.ctx.dependents(dependency)
        return readers

    # -- consumers -------------------------------------------------------------------
    def _compile_consumer(self, ref: ObjectRef, routes: set[ObjectRef]) -> set[Owner]:
        """Compile a consumer's own part; the credential identifiers it held before or
        holds now (their holders are settled again). Routes whose selector's choice
        changes are added to ``routes``."""
        labels_before = self._labels(ref)
        self.ctx.remove_consumer(ref)
        self._consumer_specs.pop(ref, None)
        self._found.pop(ref, None)
        obj = self._inputs.get(ref)
        if obj is None:
            self.ctx.forget(ref)
        else:
            with self.ctx.compiling(ref):
                parsed = self._parse(ref, obj, WsConsumerSpec)
                if parsed is not None:
                    checked, spec = parsed
                    self.ctx.add_consumer(ref, checked, spec)
                    self._consumer_specs[ref] = spec
                    found = consumer_processor.credentials(self.ctx, ref, spec)
                    if found is not None:
                        self._found[ref] = found
        labels_after = self._labels(ref)
        if labels_before != labels_after:
            for route in self.ctx.dependents(("Consumers", ref.namespace, "")):
                selector = self._route_specs[route].auth.allowed_consumers.selector
                if selector is None or (
                        labels_before is not None and selector.matches(labels_before)) != (
                        labels_after is not None and selector.matches(labels_after)):
                    routes.add(route)
        held_before = self._held.pop(ref, set())
        held_after = {(ref.namespace, *consumer_processor.identifier(c))
                      for c in self._found.get(ref, ())}
        for owner in held_before - held_after:
            self._owners[owner].discard(ref)
            if not self._owners[owner]:
                del self._owners[owner]
        for owner in held_after - held_before:
            self._owners[owner].add(ref)
        if held_after:
            self._held[ref] = held_after
        return held_before | held_after

    def _parse(self, ref: ObjectRef, obj: K8sObject, model: type[SpecT]
               ) -> tuple[K8sObject, SpecT] | None:
        """An object held to its shape and its spec parsed (problems reported on it);
        None when either fails."""
        checked = checked_object(obj, self.ctx)
        spec = parse_spec(self.ctx, ref, checked, model) if checked is not None else None
        return (checked, spec) if checked is not None and spec is not None else None

    def _labels(self, ref: ObjectRef) -> dict[str, str] | None:
        """A parsed consumer's labels (None when it has no valid spec, or is gone)."""
        entry = self.ctx.consumers.get(ref.namespace, {}).get(ref)
        return labels_of(entry[0]) if entry is not None else None

    def _settle(self, ref: ObjectRef, holders: consumer_processor.Holders) -> None:
        key = f"{ref.namespace}/{ref.name}"
        with self.ctx.settling(ref):
            found = self._found.get(ref)
            if found is None:
                self._set_item("consumer", key, None)
            else:
                self._set_item("consumer", key, consumer_processor.settle(
                    self.ctx, ref, self._consumer_specs[ref], found, holders))
        self._changed_refs.add(ref)

    # -- routes ----------------------------------------------------------------------
    def _compile_route(self, ref: ObjectRef, endpoints: set[str],
                       certificates: set[NamespacedName]) -> None:
        before = self._routes.pop(ref, None)
        self._route_specs.pop(ref, None)
        after = None
        obj = self._inputs.get(ref)
        if obj is None:
            self.ctx.forget(ref)
        else:
            with self.ctx.compiling(ref):
                parsed = self._parse(ref, obj, WsRouteSpec)
                if parsed is not None:
                    checked, spec = parsed
                    self._route_specs[ref] = spec
                    try:
                        route = compile_route(self.ctx, ref, checked, spec)
                    except (ValueError, TypeError) as exc:  # pydantic's errors are ValueErrors
                        uncompilable(self.ctx, ref, exc)
                    else:
                        after = _RouteResult(route, serving_certificate(self.ctx, ref, spec))
        if after is not None:
            self._routes[ref] = after
        self._set_item("route", f"{ref.namespace}/{ref.name}", after.route if after else None)
        self._changed_refs.add(ref)
        # The endpoints it names, the certificate it shares.
        key_before = before.route.endpoints_key if before else None
        key_after = after.route.endpoints_key if after else None
        if key_before != key_after:
            if key_before is not None:
                self._endpoint_users[key_before].discard(ref)
                endpoints.add(key_before)
            if key_after is not None and after is not None:
                self._endpoint_users[key_after].add(ref)
                backend = after.route.backend
                self._endpoint_names[key_after] = (ref.namespace, backend.service, backend.port)
                endpoints.add(key_after)
        cert_before = before.certificate if before else None
        cert_after = after.certificate if after else None
        if cert_before != cert_after:
            for part, users in ((cert_before, False), (cert_after, True)):
                if part is not None:
                    name = (part.namespace, part.name)
                    if users:
                        self._certificate_users[name].add(ref)
                    else:
                        self._certificate_users[name].discard(ref)
                    certificates.add(name)

    def _compile_endpoints(self, key: str) -> None:
        namespace, service, port = self._endpoint_names[key]
        pseudo = ObjectRef("Endpoints", namespace, key)
        users = self._endpoint_users.get(key)
        if not users:
            self._endpoint_users.pop(key, None)
            self._endpoint_names.pop(key, None)
            self.ctx.forget(pseudo)
            self._set_item("endpoints", key, None)
            return
        with self.ctx.compiling(pseudo):
            found = service_endpoints(self.ctx, namespace, service, port)
        if self._set_item("endpoints", key, found):
            self._changed_refs |= users  # their ready endpoint count

    def _merge_certificate(self, name: NamespacedName) -> None:
        users = self._certificate_users.get(name)
        parts = [part for ref in sorted(users or ())
                 if (part := self._routes[ref].certificate) is not None]
        if not parts:
            self._certificate_users.pop(name, None)
        merged = merge_certificates(parts)
        self._set_item("certificate", f"{name[0]}/{name[1]}", merged[0] if merged else None)

    # -- output ----------------------------------------------------------------------
    def _set_item(self, kind: str, key: str, item: BaseModel | None) -> bool:
        items = self.items[kind]
        if items.get(key) == item:
            return False
        _, digest_before = self.encoded.pop((kind, key), (b"", 0))
        self._digest_sum -= digest_before
        if item is None:
            del items[key]
        else:
            items[key] = item
            encoded = item.model_dump_json().encode()
            digest = cfg.item_digest(kind, item, encoded)  # type: ignore[arg-type]
            self.encoded[(kind, key)] = (encoded, digest)
            self._digest_sum += digest
        self._changed_items.add((kind, key))
        return True

    def result(self) -> Compiled:
        """The config and problems now, and what changed since the last result."""
        problems: dict[ObjectRef, list[Problem]] = {}
        for source in (self.ctx.problems, self.ctx.settled, self._loose):
            for ref, found in source.items():
                if found:
                    problems.setdefault(ref, []).extend(found)
        # Ready endpoints per route: counted again only when a route or endpoints changed
        # (a build is often one consumer's).
        if self._route_endpoints is None or any(
                kind in ("route", "endpoints") for kind, _ in self._changed_items):
            endpoints = self.items["endpoints"]
            self._route_endpoints = {
                ref: len(e.endpoints) if (e := endpoints.get(r.route.endpoints_key)) else 0
                for ref, r in self._routes.items()}
        route_endpoints = self._route_endpoints
        compiled = Compiled(
            items={kind: dict(items) for kind, items in self.items.items()},
            version=cfg.version_of(self._digest_sum),
            encoded=dict(self.encoded),
            problems_by_ref=dict(sorted(problems.items())),
            route_endpoints=route_endpoints,
            changed_items=frozenset(self._changed_items),
            changed_refs=frozenset(self._changed_refs),
        )
        self._changed_items = set()
        self._changed_refs = set()
        return compiled


# What changes on every write and that no compile reads.
_UNREAD = ("status",)
_UNREAD_METADATA = ("resourceVersion", "managedFields")


def _same_input(before: K8sObject, after: K8sObject) -> bool:
    """Whether two bodies of an object compile alike: they differ at most in what no
    compile reads (its status, as our own status writes bring it back)."""
    if before == after:
        return True
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return False
    meta_before, meta_after = before.get("metadata"), after.get("metadata")
    if isinstance(meta_before, Mapping) and isinstance(meta_after, Mapping):
        if {k: v for k, v in meta_before.items() if k not in _UNREAD_METADATA} != \
                {k: v for k, v in meta_after.items() if k not in _UNREAD_METADATA}:
            return False
    elif meta_before != meta_after:
        return False
    skipped = ("metadata", *_UNREAD)
    return {k: v for k, v in before.items() if k not in skipped} == \
        {k: v for k, v in after.items() if k not in skipped}


def _key_of(kind: str, obj: object) -> ObjectRef | None:
    """The key an object of a snapshot is filed under (None: not an object with a name)."""
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    return ObjectRef(kind, str(namespace or DEFAULT_NAMESPACE), name)


def compile_snapshot(snapshot: Snapshot) -> Compiled:
    """Every object of the snapshot, compiled afresh."""
    return Compiler().load(snapshot).result()

