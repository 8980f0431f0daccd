"""Running the real kopf operator in a test: its own thread and loop, pointed at the
emulator through a kubeconfig, stopped (and joined) when the test ends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import kopf
import yaml

from wsgate_operator.main import run_operator
from wsgate_operator.options import OperatorOptions

T = TypeVar("T")


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator",
                      "context": {"cluster": "emulator", "user": "tester"}}],
    }))
    return path


class OperatorThread:
    """kopf cancels every task created after it started when it stops: so it gets a
    thread and a loop of its own, and the test's loop is never touched.

    The loop runs in asyncio's debug mode (unless ``debug=False``, for benchmarks):
    anything that calls into it from another thread (a handler kopf runs in its thread
    pool setting an asyncio.Event, say) raises there instead of corrupting it quietly.
    ``on_loop`` runs a coroutine on the operator's loop, with the operator's memo (its
    cache, reconciler and pusher)."""

    def __init__(self, options: OperatorOptions, *, debug: bool = True) -> None:
        self.options = options
        self.debug = debug
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.memo = kopf.Memo()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.loop.slow_callback_duration = 1.0  # debug mode's warnings: only real stalls
            await run_operator(self.options, self.stop_flag, ready=self.ready_flag,
                               memo=self.memo)

        try:
            asyncio.run(main(), debug=self.debug)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def on_loop(self, work: Callable[[kopf.Memo], Awaitable[T]],
                      timeout: float = 20.0) -> T:
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(work(self.memo), self.loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def __aenter__(self) -> OperatorThread:
        self._thread.start()
        ready = await asyncio.to_thread(self.ready_flag.wait, 20)
        if not ready:
            raise RuntimeError(f"the operator did not start: {self.error!r}")
        return self

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self._thread.join, 20)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop within 20 s")

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
