"""The shapes the build reads: every object held to them before anything looks at it.

Objects of any shape may arrive (hand-written manifests are not checked by an API
server). An object whose metadata is unusable is left out with a problem on it; within
Secrets, Services and EndpointSlices a malformed entry is dropped with a problem naming
it and the rest kept; specs are parsed against the resource models, each validation
error becoming a problem that names the field. So the compiler reports malformed input
and never raises on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .context import BuildContext
from .objects import DEFAULT_NAMESPACE, SNAPSHOT_KINDS, K8sObject, ObjectRef, Snapshot

SpecT = TypeVar("SpecT", bound=BaseModel)
Bad = Callable[[str, str], None]


def uncompilable(ctx: BuildContext, ref: ObjectRef, exc: Exception, where: str = "") -> None:
    """The last line of defence: what ``well_formed`` did not foresee still becomes a
    problem on its object, never an exception out of the compiler."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    ctx.problem(ref, where, "InvalidSpec", f"cannot be compiled: {detail}", invalid=True)


def well_formed(snapshot: Snapshot, ctx: BuildContext) -> Snapshot:
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
            checked = checked_object(obj, ctx)
            if checked is None:
                continue
            ref = ObjectRef.of(checked)
            if ref in seen:
                ctx.problem(ref, "metadata.name", "Duplicate",
                            "is defined more than once; only the first is used", invalid=True)
                continue
            seen.add(ref)
            getattr(clean, attr).append(checked)
    return clean


def checked_object(obj: object, ctx: BuildContext) -> K8sObject | None:
    if not isinstance(obj, Mapping):
        ctx.problem(ObjectRef("?", DEFAULT_NAMESPACE, "?"), "", "InvalidObject",
                    f"is not a Kubernetes object (a mapping) but {_kind_of(obj)}", invalid=True)
        return None
    kind = obj.get("kind")
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ref = ObjectRef(str(kind), DEFAULT_NAMESPACE, name if isinstance(name, str) else "?")

    def bad(field: str, message: str) -> None:
        ctx.problem(ref, field, "InvalidObject", message, invalid=True)

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


def _checked_secret(obj: dict[str, Any], bad: Bad) -> K8sObject:
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


def _checked_service(obj: dict[str, Any], bad: Bad) -> K8sObject:
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


def _checked_slice(obj: dict[str, Any], bad: Bad) -> K8sObject:
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


def _port_problem(port: object, where: str, bad: Bad, *, targets: bool) -> bool:
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



# --- specs -------------------------------------------------------------------


def parse_all(ctx: BuildContext, objects: Iterable[K8sObject], model: type[SpecT]
              ) -> list[tuple[ObjectRef, K8sObject, SpecT]]:
    """The objects whose spec is valid, parsed; a problem per error on the others."""
    parsed = []
    for obj in objects:
        ref = ObjectRef.of(obj)
        spec = parse_spec(ctx, ref, obj, model)
        if spec is not None:
            parsed.append((ref, obj, spec))
    return parsed


def parse_spec(ctx: BuildContext, ref: ObjectRef, obj: K8sObject, model: type[SpecT]
               ) -> SpecT | None:
    try:
        return model.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        _validation_problems(ctx, ref, exc)
        return None


def _validation_problems(ctx: BuildContext, ref: ObjectRef, exc: ValidationError) -> None:
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
        ctx.problem(ref, path, "InvalidSpec", message, invalid=True)


def _is_type_tag(part: str) -> bool:
    """Union members and validators appear in pydantic's error locations as tags
    ('int', 'constrained-str', 'function-after[...]'); they are not fields."""
    return part in {"int", "str", "float", "bool"} or "-" in part or "[" in part

