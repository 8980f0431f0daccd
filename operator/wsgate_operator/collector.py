"""When the operator's full garbage collections run: only while it is quiet.

CPython starts a full (generation 2) collection on its own whenever enough objects
have survived the younger generations, which in the operator is right when a build
allocates: in the write -> push path. Such a collection walks every tracked object
(what start-up built is frozen out of its sight, handlers.py, but the watches' state and
the bodies of every change since are not) and held the loop tens of ms at ten
thousand consumers while a rotated key waited to be pushed.

So automatic full collections are off (the oldest generation's threshold is never
reached; the two younger ones collect as before, they cost what was allocated
since), and this task runs one itself: at most every ``every`` seconds, once nothing
waits to be built or pushed and no change has come for ``quiet`` seconds. Should the
operator never be quiet that long (changes arriving every second for minutes), after
``patience`` seconds one runs at the first moment nothing waits to be built or pushed,
so cyclic garbage is still freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("wsgate.collector")

# The oldest generation's threshold while automatic full collections are off.
NEVER = 1 << 30


class Collector:
    def __init__(
        self,
        idle: Callable[[], bool],
        wait_idle: Callable[[], Awaitable[None]],
        activity: Callable[[], int],
        *,
        quiet: float = 1.0,
        every: float = 30.0,
        patience: float = 300.0,
    ) -> None:
        """``idle``: nothing waits to be built or pushed now; ``wait_idle``: until so;
        ``activity``: a count that moves with every change the operator is told of."""
        self._idle = idle
        self._wait_idle = wait_idle
        self._activity = activity
        self._quiet = quiet
        self._every = every
        self._patience = patience
        self.collections = 0  # full collections this task ran

    async def run(self) -> None:
        """Hold automatic full collections off and run them at quiet moments, until
        cancelled (the automatic ones come back then)."""
        saved = gc.get_threshold()
        gc.set_threshold(saved[0], saved[1], NEVER)
        try:
            while True:
                await asyncio.sleep(self._every)
                await self._until_quiet()
                self._collect()
        finally:
            gc.set_threshold(*saved)

    async def _until_quiet(self) -> None:
        """Until nothing waits to be built or pushed and no change came for ``quiet``
        seconds (after ``patience`` seconds, until nothing waits). Returns with no
        await between its last look and the caller's collection."""
        deadline = time.monotonic() + self._patience
        while True:
            await self._wait_idle()
            if time.monotonic() >= deadline and self._idle():
                return
            seen = self._activity()
            await asyncio.sleep(self._quiet)
            if self._activity() == seen and self._idle():
                return

    def _collect(self) -> None:
        started = time.perf_counter()
        found = gc.collect()
        self.collections += 1
        log.debug("full collection", extra={
            "unreachable": found, "ms": round((time.perf_counter() - started) * 1000, 1)})
