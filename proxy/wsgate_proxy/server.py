"""Running the proxy: the client listener, the admin listener, and a config source."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .admin import admin_app
from .config import GatewayConfig
from .gateway import Gateway
from .relay import GOING_AWAY
from .runtime import Runtime

log = logging.getLogger("wsgate.proxy")

METRICS_FLUSH_SECONDS = 5.0
# How often idle timeouts are looked at: their precision.
TICK_SECONDS = 0.25
# How long live sessions get to end after their close frames when the proxy stops.
SHUTDOWN_GRACE_SECONDS = 6.0

ApplyConfig = Callable[[GatewayConfig], object]
ConfigSource = Callable[[ApplyConfig], Awaitable[None]]


@dataclass(frozen=True)
class ProxyOptions:
    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    admin_token: str | None = None


async def serve(
    options: ProxyOptions, stop: asyncio.Event, config_source: ConfigSource | None = None
) -> None:
    """Serve until ``stop`` is set, then close live sessions with 1001 and stop."""
    runtime = Runtime()
    gateway = Gateway(runtime)
    # The low-level server: every request goes to the gateway, no router in between.
    proxy_runner = web.ServerRunner(web.Server(gateway.handle), access_log=None)
    admin_runner = web.AppRunner(admin_app(runtime, options.admin_token), access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    tasks: list[asyncio.Task[None]] = []
    proxy_site = web.TCPSite(proxy_runner, *options.listen)
    try:
        await proxy_site.start()
        await web.TCPSite(admin_runner, *options.admin_listen).start()
        log.info("listening", extra={"listen": _address(proxy_runner),
                                     "admin_listen": _address(admin_runner)})
        if config_source is not None:
            tasks.append(asyncio.create_task(config_source(runtime.apply)))
        tasks.append(asyncio.create_task(_periodic(runtime)))
        await stop.wait()
        log.info("stopping", extra={"sessions": len(runtime.sessions)})
    finally:
        for task in tasks:
            task.cancel()
        # Stop accepting first; then end live sessions with close frames while their
        # connections still deliver the peers' replies (aiohttp's own shutdown stops
        # reading from connections, so it comes last).
        await proxy_site.stop()
        runtime.close_all(GOING_AWAY, "proxy shutting down")
        await _wait_sessions_ended(runtime, SHUTDOWN_GRACE_SECONDS)
        await proxy_runner.cleanup()
        await admin_runner.cleanup()


def _address(runner: web.BaseRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"{host}:{port}"


async def _periodic(runtime: Runtime) -> None:
    loop = asyncio.get_running_loop()
    next_flush = loop.time() + METRICS_FLUSH_SECONDS
    while True:
        await asyncio.sleep(TICK_SECONDS)
        now = loop.time()
        runtime.tick(time.monotonic())
        if now >= next_flush:
            runtime.flush_counters()
            next_flush = now + METRICS_FLUSH_SECONDS


async def _wait_sessions_ended(runtime: Runtime, grace: float) -> None:
    pending = [s.done for s in runtime.sessions]
    if not pending:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await asyncio.gather(*pending, return_exceptions=True)
    for session in list(runtime.sessions):
        session.abort()
