"""What a build gives: the config item by item, what it found wrong with each object,
and what changed since the build before."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from wsgate_proxy import config as cfg

from .objects import ObjectRef, Problem

# An item of the config: its kind (route, consumer, certificate, endpoints) and key.
ItemKey = tuple[str, str]


@dataclass(frozen=True)
class Compiled:
    # The config's items by kind and key (a build's own copy: later builds never change it).
    items: dict[str, dict[str, Any]]
    # The version of the whole config (config.version_of), and each item's canonical
    # JSON and digest, as pushes carry them.
    version: str = ""
    encoded: dict[ItemKey, tuple[bytes, int]] = field(default_factory=dict)
    problems_by_ref: dict[ObjectRef, list[Problem]] = field(default_factory=dict)
    # Ready endpoints per compiled route, for status and summaries.
    route_endpoints: dict[ObjectRef, int] = field(default_factory=dict)
    # What this build changed: config items, and objects whose result (problems,
    # compiled form, ready endpoints) may differ from the build before.
    changed_items: frozenset[ItemKey] = frozenset()
    changed_refs: frozenset[ObjectRef] = frozenset()

    @functools.cached_property
    def config(self) -> cfg.GatewayConfig:
        """The whole config, versioned (built on first use: the operator's own paths read
        the items and the encoded items)."""
        return cfg.GatewayConfig.model_construct(version=self.version, **{
            field: tuple(self.items[kind][k] for k in sorted(self.items[kind]))
            for kind, field in cfg.ITEM_FIELDS.items()})

    @property
    def problems(self) -> list[Problem]:
        """Every problem, object by object."""
        return [p for problems in self.problems_by_ref.values() for p in problems]

    def problems_of(self, ref: ObjectRef) -> list[Problem]:
        return self.problems_by_ref.get(ref, [])

    def consumer(self, ref: ObjectRef) -> cfg.Consumer | None:
        """The compiled consumer of a WsConsumer (None when it was left out)."""
        return self.items["consumer"].get(f"{ref.namespace}/{ref.name}")
