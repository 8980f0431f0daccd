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
    assert len(deadlines) == 0


async def test_many_entries_due_at_once_are_handled_in_slices_of_the_loop():
    """10,000 sessions whose tokens share one exp: the loop turns between slices of at
    most MAX_PER_WAKEUP, so frames of live sessions are relayed meanwhile."""
    from wsgate_proxy.expiry import MAX_PER_WAKEUP

    events: list[object] = []  # owners as they fire, "tick" at each turn of the ticker
    fired: list[object] = []

    def due(owner: object, _kind: str) -> None:
        events.append(owner)
        fired.append(owner)

    deadlines = Deadlines(due)
    now = asyncio.get_running_loop().time()
    for owner in range(10_000):
        deadlines.set(owner, "expire", now + 0.01)
    deadlines.set("stale", "expire", now + 0.01)
    deadlines.clear("stale", ("expire",))

    async def ticker() -> None:  # another task on the loop, recording each turn it gets
        while len(fired) < 10_000:
            events.append("tick")
            await asyncio.sleep(0)

    await asyncio.wait_for(ticker(), 5)
    assert sorted(fired) == list(range(10_000))  # each once, the cleared one never
    run = longest = 0
    for event in events:
        run = 0 if event == "tick" else run + 1
        longest = max(longest, run)
    assert longest <= MAX_PER_WAKEUP
    assert len(deadlines) == 0
    deadlines.close()


async def test_a_session_that_ended_is_not_renewed_back_into_the_heap():
    """A mid-session re-auth answered after the session ended (client gone, then
    upstream lost) must not put it back under a deadline hours away."""
    import time

    from wsgate_proxy.expiry import Lifetimes
    from wsgate_proxy.external_auth import ExternalAuthClient
    from wsgate_proxy.outbound import Outbound

    class Ended:  # a Session after Lifetimes.ended(): only what renew() may touch
        credential_valid_until: float | None = None

    lifetimes = Lifetimes(ExternalAuthClient(Outbound()), lambda session: None)
    session = Ended()
    lifetimes.renew(session, time.time() + 3600)  # type: ignore[arg-type]
    assert len(lifetimes.deadlines) == 0
    assert not lifetimes.deadlines._heap
    await lifetimes.close()
