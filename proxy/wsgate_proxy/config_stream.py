"""The body of a config push, one item per line: a full config, or what changed.

A config of ten thousand consumers is several MB of JSON. Parsed and validated in one
call (json.loads, then pydantic) it holds the interpreter for the better part of a
second, in a thread or not. Item by item, the proxy parses a slice, lets its event
loop run, and parses on.

    {"version": "<B>", "base": "<A>"}     the header: the version this body brings
                                          the proxy to, from version A (a delta), or
                                          from anything ("base": null, a full config)
    set <kind> <item JSON>                an item added or changed
    del <kind> <key>                      an item removed

Kinds are route, consumer, certificate and endpoints (config.ITEM_MODELS); an item's
key is the one it carries (namespace/name, or namespace/service:port).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from .config import ITEM_MODELS, Item, digest_of, item_digest
from .slices import SliceClock

MEDIA_TYPE = "application/vnd.wsgate.config-stream"


class StreamError(ValueError):
    """A body that is not a config stream, with the line that is wrong."""


@dataclass
class ConfigChange:
    """What a push carries: items set and keys removed, by kind, with each set item's
    digest (config.item_digest)."""

    version: str
    base: str | None
    set: dict[str, dict[str, Item]] = field(default_factory=lambda: {k: {} for k in ITEM_MODELS})
    removed: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in ITEM_MODELS})
    digests: dict[tuple[str, str], int] = field(default_factory=dict)
    # Items parsed anew (not found in the running config, the same to the byte).
    fresh: int = 0

    @property
    def full(self) -> bool:
        return self.base is None

    def count(self) -> int:
        return sum(map(len, self.set.values())) + sum(map(len, self.removed.values()))


def encode(version: str, base: str | None, items: Iterable[tuple[str, bytes]],
           removed: Iterable[tuple[str, str]] = ()) -> bytes:
    """A body: ``items`` as (kind, item JSON), ``removed`` as (kind, key)."""
    lines = [json.dumps({"version": version, "base": base}).encode()]
    lines += [b"set " + kind.encode() + b" " + body for kind, body in items]
    lines += [f"del {kind} {key}".encode() for kind, key in removed]
    return b"\n".join(lines) + b"\n"


# An item the proxy runs already, by kind and the digest of its canonical JSON (None
# when it runs no such item).
Known = Callable[[str, int], Item | None]


def parse(body: bytes, known: Known | None = None) -> Iterator[ConfigChange | None]:
    """Parse a body: yields None between slices (the caller lets its loop run), then
    the change. An item the proxy runs already, byte for byte, is taken from ``known``
    rather than parsed again: a whole config that repeats most of what runs (an
    operator restarted, a proxy that missed a delta) builds few new objects, which the
    garbage collector would otherwise walk. A delta carries what changed, so its items
    are not looked up: the lookup indexes every item the proxy runs (about 10 ms at ten
    thousand consumers), far more than a delta of a few items costs to parse. Raises
    StreamError naming the line that is wrong."""
    version, base, start = header(body)
    change = ConfigChange(version, base)
    if base is not None:
        known = None
    clock = SliceClock()
    # Line by line, not body.split(): splitting a whole config of 50,000 consumers at
    # once held the loop 10-14 ms.
    number, size, find = 1, len(body), body.find
    while start < size:
        end = find(b"\n", start)
        if end < 0:
            end = size
        line, start, number = body[start:end], end + 1, number + 1
        if not line:
            continue
        op, _, rest = line.partition(b" ")
        kind_bytes, _, payload = rest.partition(b" ")
        kind = kind_bytes.decode("ascii", "replace")
        model = ITEM_MODELS.get(kind)
        if model is None or op not in (b"set", b"del") or not payload:
            raise StreamError(f"line {number}: expected 'set <kind> <JSON>' or 'del <kind> "
                              f"<key>' with a kind among {', '.join(ITEM_MODELS)}")
        if op == b"del":
            change.removed[kind].add(payload.decode("utf-8", "replace"))
        else:
            digest = digest_of(kind, payload)
            item = known(kind, digest) if known is not None else None
            if item is None:  # new, or not in canonical form: the digest is the canonical one's
                change.fresh += 1
                item = _validated(number, kind, model, payload)
                digest = item_digest(kind, item)
            if item.key in change.set[kind]:
                raise StreamError(f"line {number}: {kind} {item.key} is set twice")
            change.set[kind][item.key] = item
            change.digests[(kind, item.key)] = digest
        if clock.due():
            yield None
            clock.restart()
    yield change


def header(body: bytes) -> tuple[str, str | None, int]:
    """A body's version, its base (None: a whole config) and where its items begin.
    Raises StreamError."""
    end = body.find(b"\n")
    end = len(body) if end < 0 else end
    try:
        fields = json.loads(body[:end])
        version, base = fields["version"], fields.get("base")
        if not isinstance(version, str) or not (base is None or isinstance(base, str)):
            raise TypeError("version must be a string, base a string or null")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StreamError(f'line 1: not a header {{"version": ..., "base": ...}} ({exc})') \
            from None
    return version, base, end + 1


async def read(body: bytes, known: Known | None = None) -> ConfigChange:
    """Parse a body on the event loop, letting it run between slices. Raises
    StreamError."""
    change = None
    for change in parse(body, known):
        if change is None:
            await asyncio.sleep(0)
    assert change is not None
    return change


def _validated(number: int, kind: str, model: type[Item], payload: bytes) -> Item:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5])
        raise StreamError(f"line {number}: invalid {kind}: {errors}") from None


def from_items(version: str, items: dict[str, dict[str, Item]]) -> ConfigChange:
    """A full config as a change (a saved config, a JSON push, a standalone load)."""
    change = ConfigChange(version, None)
    for kind, by_key in items.items():
        change.set[kind] = dict(by_key)
        for key, item in by_key.items():
            change.digests[(kind, key)] = item_digest(kind, item)
    return change


# -- between a proxy and its manifest compiler (standalone mode, compiler_child.py) --------
# One JSON line each way, a stream's bytes after its line:
#   compiler -> proxy  {"change": N} then N bytes   a config stream to apply
#   compiler -> proxy  {"refused": [errors]}        the manifests do not compile
#   proxy -> compiler  {"version": V}               the version it runs (null: none), at
#                                                   start and after each message


def frame_change(body: bytes) -> bytes:
    return json.dumps({"change": len(body)}).encode() + b"\n" + body


def frame_refused(errors: list[str]) -> bytes:
    return json.dumps({"refused": errors}).encode() + b"\n"


def frame_version(version: str | None) -> bytes:
    return json.dumps({"version": version}).encode() + b"\n"


def read_version(line: bytes) -> str | None:
    """The version a ``frame_version`` line carries; raises ValueError on anything else."""
    message = json.loads(line)
    version = message.get("version") if isinstance(message, dict) else 0
    if not (version is None or isinstance(version, str)):
        raise ValueError(f"not a version line: {line[:200]!r}")
    return version
