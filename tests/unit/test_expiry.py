"""The one timer structure of credential deadlines (expiry.Deadlines)."""

from __future__ import annotations

import asyncio

from wsgate_proxy.expiry import Deadlines


async def test_deadlines_fire_in_order_once_and_can_be_moved_or_cleared():
    fired: list[tuple[str, str]] = []
    deadlines = Deadlines(lambda owner, kind: fired.append((owner, kind)))
    now = asyncio.get_running_loop().time()
    deadlines.set("a", "expire", now + 0.06)
    deadlines.set("b", "expire", now + 0.02)
    deadlines.set("c", "expire", now + 0.04)
    deadlines.set("c", "expire", now + 0.08)  # renewed: the earlier entry is stale
    deadlines.set("d", "expire", now + 0.03)
    deadlines.clear("d", ("expire",))  # the session ended
    deadlines.set("a", "recheck", now + 0.01)
    await asyncio.sleep(0.15)
    assert fired == [("a", "recheck"), ("b", "expire"), ("a", "expire"), ("c", "expire")]
    assert len(deadlines) == 0
    deadlines.close()


async def test_the_heap_stays_within_twice_the_live_deadlines():
    deadlines = Deadlines(lambda owner, kind: None)
    now = asyncio.get_running_loop().time()
    for round_ in range(50):  # every session renewed 50 times
        for owner in range(1000):
            deadlines.set(owner, "expire", now + 100 + round_)
    assert len(deadlines) == 1000
    assert len(deadlines._heap) <= 2 * 1000 + 64
    deadlines.close()


async def test_a_set_of_none_clears_and_nothing_fires():
    fired = []
    deadlines = Deadlines(lambda owner, kind: fired.append(owner))
    deadlines.set("a", "expire", asyncio.get_running_loop().time() + 0.01)
    deadlines.set("a", "expire", None)
    await asyncio.sleep(0.05)
    assert fired == []
    assert deadlines.when("a", "expire") is None
