"""The slice clock: when a slice of work on the loop has had its time."""

from __future__ import annotations

import asyncio

from wsgate_proxy.slices import SliceClock


def test_due_once_the_slice_has_had_its_time() -> None:
    assert not SliceClock(seconds=60).due()
    assert SliceClock(seconds=0).due()


def test_reads_the_clock_every_nth_call() -> None:
    clock = SliceClock(seconds=0, every=3)
    assert [clock.due() for _ in range(6)] == [False, False, True, False, False, True]
    clock.due()
    clock.restart()  # counts afresh
    assert [clock.due() for _ in range(3)] == [False, False, True]


def test_pause_lets_the_loop_run_and_begins_a_new_slice() -> None:
    async def main() -> list[str]:
        ran: list[str] = []
        clock = SliceClock(seconds=-1, every=2)  # due at every second call
        assert [clock.due(), clock.due()] == [False, True]
        clock.due()  # the first call of the next two
        asyncio.get_running_loop().call_soon(ran.append, "other work")
        await clock.pause()
        assert [clock.due(), clock.due()] == [False, True]  # counted afresh
        return ran

    assert asyncio.run(main()) == ["other work"]
