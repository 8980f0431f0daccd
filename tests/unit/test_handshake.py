"""handshake.py's Handshake: what a live session keeps of it."""

from __future__ import annotations

import dataclasses

from wsgate_proxy.auth import Authenticated
from wsgate_proxy.config import Route
from wsgate_proxy.handshake import Handshake
from wsgate_proxy.routing import Match


def test_settled_drops_the_config_snapshot_and_keeps_every_other_field():
    route = Route.model_validate({"namespace": "d", "name": "r",
                                  "paths": [{"type": "Prefix", "value": "/"}],
                                  "backend": {"service": "s", "port": "80"}})
    snapshot = object()  # stands for the ActiveConfig the handshake was served from
    handshake = Handshake(snapshot, Match(route, route.paths[0], "/up"), "h:80",  # type: ignore
                          "/p", "q=1", ("chat",), Authenticated(None, None))
    settled = handshake.settled()
    assert settled.active is None
    # Field by field, so that a field added to Handshake must be carried over.
    for field in dataclasses.fields(Handshake):
        if field.name != "active":
            assert getattr(settled, field.name) is getattr(handshake, field.name), field.name
