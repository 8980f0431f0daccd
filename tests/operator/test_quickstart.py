"""The quickstart through the real operator: objects in any order, statuses, traffic."""

from __future__ import annotations

import random

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import KEY, eventually, objects_for


def conditions(obj):
    return {c["type"]: (c["status"], c["reason"])
            for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.mark.parametrize("seed", [1, 2])
async def test_quickstart_in_any_order(api, proxies, operator, apply, upstream, seed):
    proxies.start("proxy-a", 0)
    objects = objects_for(upstream.port)
    random.Random(seed).shuffle(objects)
    apply(*objects)

    async def programmed():
        route = api.get("wsgate.io/v1alpha1", "WsRoute", "echo")
        assert conditions(route) == {"Accepted": ("True", "Accepted"),
                                     "ResolvedRefs": ("True", "ResolvedRefs"),
                                     "Programmed": ("True", "Programmed")}
        assert route["status"]["proxies"] == {"synced": 1, "total": 1}
        assert route["status"]["observedGeneration"] == route["metadata"]["generation"]

    await eventually(programmed, timeout=15)
    consumer = api.get("wsgate.io/v1alpha1", "WsConsumer", "john")
    assert conditions(consumer) == {"Ready": ("True", "Ready"),
                                    "ResolvedRefs": ("True", "ResolvedRefs")}
    with pytest.raises(InvalidStatus) as info:
        async with connect(proxies.url("proxy-a")):
            pass
    assert info.value.response.status_code == 401
    async with connect(proxies.url("proxy-a"), additional_headers=KEY) as ws:
        await ws.send("through the operator")
        assert await ws.recv() == "through the operator"
