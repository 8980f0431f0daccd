"""Work on the event loop a slice at a time: how long one slice may hold the loop, and
the clock that says when it has.

Long work on the proxy's loop (parsing and building a config, letting a replaced one
go, reviewing live sessions against a new config) runs in slices; between them the
loop relays frames and serves handshakes, so no live session waits longer than a
slice for its turn.
"""

from __future__ import annotations

import asyncio
import time

# How long one slice may hold the loop before it lets other work run.
SLICE_SECONDS = 0.002


class SliceClock:
    """The time a slice of work has taken: ``due()`` once it has had its share,
    ``restart()`` when the next slice begins (after the caller let the loop run:
    ``yield`` in a generator), ``await pause()`` both in a coroutine.

    Reading the clock costs as much as a cheap step (a dict assignment), so with
    ``every=N`` ``due()`` reads it only every Nth call."""

    __slots__ = ("_calls", "_every", "_seconds", "_started")

    def __init__(self, seconds: float = SLICE_SECONDS, every: int = 1) -> None:
        self._seconds, self._every = seconds, every
        self._calls = 0
        self._started = time.perf_counter()

    def due(self) -> bool:
        """Whether this slice has had its time (the loop should run now)."""
        self._calls += 1
        if self._calls < self._every:
            return False
        self._calls = 0
        return time.perf_counter() - self._started > self._seconds

    def restart(self) -> None:
        """A new slice begins."""
        self._calls = 0
        self._started = time.perf_counter()

    async def pause(self) -> None:
        """Let the loop run, then begin a new slice."""
        await asyncio.sleep(0)
        self.restart()
