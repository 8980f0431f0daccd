"""What a build gives: the config, and what it found wrong with each object."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from wsgate_proxy import config as cfg

from .objects import ObjectRef, Problem


@dataclass
class Compiled:
    config: cfg.GatewayConfig
    problems_by_ref: dict[ObjectRef, list[Problem]] = field(default_factory=dict)
    # Ready endpoints per compiled route, for status and summaries.
    route_endpoints: dict[ObjectRef, int] = field(default_factory=dict)

    @property
    def problems(self) -> list[Problem]:
        """Every problem, object by object."""
        return [p for problems in self.problems_by_ref.values() for p in problems]

    @functools.cached_property
    def _consumers(self) -> dict[tuple[str, str], cfg.Consumer]:
        return {(c.namespace, c.name): c for c in self.config.consumers}

    def problems_of(self, ref: ObjectRef) -> list[Problem]:
        return self.problems_by_ref.get(ref, [])

    def consumer(self, ref: ObjectRef) -> cfg.Consumer | None:
        """The compiled consumer of a WsConsumer (None when it was left out)."""
        return self._consumers.get((ref.namespace, ref.name))
