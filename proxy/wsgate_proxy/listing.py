"""What a proxy runs, item by item: its version and each item's short digest
(``GET /config/digests``).

An operator that does not know the version a proxy runs (the operator restarted after a
change made while it was down; the proxy restarted from a saved config older than the
operator remembers) reads this, and sends what differs as a delta from that version
instead of the whole config: at ten thousand consumers the whole config costs each
proxy a parse of every item, the listing a line each.

    {"version": "<V>"}          the header: the version the items below make up
    <kind> <key> <digest>       one line per item: the first 64 bits of its digest
                                (config.item_digest), 16 hex digits

The short digest only chooses what the delta carries: an item whose digest matched by
chance would be left out, and the delta would not lead to the version it claims, which
the proxy refuses (409) and the operator answers with the whole config. About 45 bytes
an item: 2.3 MB at 50,000 consumers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .slices import SliceClock

MEDIA_TYPE = "application/vnd.wsgate.config-digests"
SHORT_BITS = 64
_SHIFT = 256 - SHORT_BITS


def short(digest: int) -> int:
    """The part of an item's digest (config.item_digest) a listing carries."""
    return digest >> _SHIFT


@dataclass(frozen=True)
class Listing:
    """A proxy's version and the short digest of each item it runs, by (kind, key)."""

    version: str
    digests: dict[tuple[str, str], int]


def render(version: str, digests: Iterable[tuple[tuple[str, str], int]]) -> Iterator[bytes]:
    """The listing a slice at a time: each chunk is what one slice (slices.SLICE_SECONDS)
    rendered; the caller lets its loop run between chunks."""
    yield json.dumps({"version": version}).encode() + b"\n"
    clock = SliceClock(every=64)
    lines: list[str] = []
    for (kind, key), digest in digests:
        lines.append(f"{kind} {key} {digest >> _SHIFT:016x}\n")
        if clock.due():
            yield "".join(lines).encode()
            lines.clear()
            clock.restart()
    if lines:
        yield "".join(lines).encode()


def parse(body: bytes) -> Listing:
    """Read a listing; raises ValueError naming the line that is wrong."""
    lines = body.split(b"\n")
    try:
        version = json.loads(lines[0])["version"]
        if not isinstance(version, str):
            raise TypeError("the version must be a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'line 1: not a header {{"version": ...}} ({exc})') from None
    digests: dict[tuple[str, str], int] = {}
    for number, line in enumerate(lines[1:], 2):
        if not line:
            continue
        fields = line.split(b" ")
        if len(fields) != 3 or len(fields[2]) != SHORT_BITS // 4:
            raise ValueError(f"line {number}: expected '<kind> <key> <16 hex digits>'")
        try:
            digest = int(fields[2], 16)
            item = (fields[0].decode(), fields[1].decode())
        except ValueError:  # UnicodeDecodeError is one
            raise ValueError(f"line {number}: expected '<kind> <key> <16 hex digits>'") \
                from None
        digests[item] = digest
    return Listing(version, digests)
