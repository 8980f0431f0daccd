"""Running the proxy: the client listener, the admin listener, and a config source."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import prometheus_client
from aiohttp import web

from .admin import admin_app
from .config import GatewayConfig
from .frames import CloseCode
from .gateway import Gateway
from .leases import LeaseStore, StoreOptions
from .listener import HeadLimits, Listener
from .passwords import MAX_PENDING
from .runtime import Runtime
from .state import StateDir

log = logging.getLogger("wsgate.proxy")

METRICS_FLUSH_SECONDS = 5.0
# How often idle timeouts are looked at: their precision.
TICK_SECONDS = 0.25
# The interpreter's switch interval (sys.setswitchinterval; Python's default is 5 ms).
SWITCH_SECONDS = 0.001
# How long live sessions get to end after their close frames when the proxy stops.
SHUTDOWN_GRACE_SECONDS = 6.0



@dataclass(frozen=True)
class ConfigTarget:
    """What a config source (standalone's compiler) feeds."""

    # Swaps a config stream in (a delta or a whole config, parsed and built a slice at
    # a time); False when it is the version already running; raises StreamError,
    # ConfigMismatch.
    apply: Callable[[bytes], Awaitable[bool]]
    # Why the last set the source read could not be used ([] once one applied): /readyz.
    report: Callable[[list[str]], None]
    # The version running (None: none yet).
    version: Callable[[], str | None]


ConfigSource = Callable[[ConfigTarget], Awaitable[None]]


@dataclass(frozen=True)
class ProxyOptions:
    listen: tuple[str, int]
    admin_listen: tuple[str, int]
    admin_token: str | None = None
    # On stop, how long live sessions may go on before they are closed with 1001.
    drain_seconds: float = 10.0
    state_dir: Path | None = None
    # wss:// with the certificates of the routes' tls.secretName, chosen by SNI.
    tls_listen: tuple[str, int] | None = None
    # Bounds on request heads and idle connections (listener.py).
    heads: HeadLimits = field(default_factory=HeadLimits)
    # Password checks waiting for or running on the PBKDF2 pool; beyond, 503.
    password_queue: int = MAX_PENDING
    # Connections the kernel queues for each client listener until the proxy accepts
    # them (capped by net.core.somaxconn): room for a fleet reconnecting at once, where
    # aiohttp's default of 128 would leave most of it to SYN retries, seconds apart.
    backlog: int = 4096
    # Connection limits counted across the proxies sharing this Redis; None: per proxy.
    limits_store: StoreOptions | None = None


async def serve(
    options: ProxyOptions, stop: asyncio.Event, config_source: ConfigSource | None = None
) -> None:
    """Serve until ``stop`` is set, then close live sessions with 1001 and stop."""
    # No *_created series: with 1k routes they are a third of a 2 MB scrape, and say
    # nothing the process start time does not.
    prometheus_client.disable_created_metrics()
    # A thread that holds the interpreter (the state writer putting a config together)
    # gives it back to the event loop after at most 1 ms rather than 5.
    sys.setswitchinterval(SWITCH_SECONDS)
    store = LeaseStore(options.limits_store) if options.limits_store is not None else None
    runtime = Runtime(password_queue=options.password_queue, shared=store)
    state = StateDir(options.state_dir) if options.state_dir else None

    def keep(changed: bool) -> bool:
        if changed and state is not None and runtime.active is not None:
            state.save_soon(runtime.active)
        return changed

    def apply(config: GatewayConfig) -> bool:
        return keep(runtime.apply(config))

    async def apply_stream(body: bytes) -> bool:
        return keep(await runtime.apply_stream(body))

    if state is not None and (saved := state.load()) is not None:
        runtime.apply(saved)  # ready at once; a newer config replaces it when pushed
    gateway = Gateway(runtime)
    # Every request head goes to the gateway: no web framework, no router in between.
    listener = Listener(gateway.handle, options.heads)
    admin_runner = web.AppRunner(admin_app(runtime, options.admin_token, apply, apply_stream),
                                 access_log=None)
    await admin_runner.setup()
    tasks: list[asyncio.Task[None]] = []
    try:
        host, port = await listener.start(*options.listen, backlog=options.backlog)
        addresses = [f"{host}:{port}"]
        if options.tls_listen is not None:
            host, port = await listener.start(
                *options.tls_listen, backlog=options.backlog,
                ssl_context=runtime.certificates.listener_context())
            addresses.append(f"{host}:{port}")
        await web.TCPSite(admin_runner, *options.admin_listen).start()
        log.info("listening", extra={
            "listen": addresses[0], "admin_listen": _address(admin_runner),
            **({"tls_listen": addresses[1]} if options.tls_listen else {})})
        if config_source is not None:
            tasks.append(asyncio.create_task(config_source(ConfigTarget(
                apply_stream, runtime.report_source, lambda: runtime.version))))
        tasks.append(asyncio.create_task(_periodic(runtime)))
        if store is not None:
            tasks.append(asyncio.create_task(store.run()))
        await stop.wait()
    finally:
        log.info("stopping", extra={"sessions": len(runtime.sessions),
                                    "drain_seconds": options.drain_seconds})
        # Stop accepting and report not ready; let sessions end on their own for the
        # drain period; then close the rest with close frames while their connections
        # still deliver the peers' replies; last, the connections no session owns.
        runtime.draining = True
        listener.stop_accepting()
        await _wait_sessions_ended(runtime, options.drain_seconds, abort=False)
        for task in tasks:
            task.cancel()
        runtime.close_all(CloseCode.GOING_AWAY, "proxy shutting down")
        await _wait_sessions_ended(runtime, SHUTDOWN_GRACE_SECONDS)
        await listener.close()
        await admin_runner.cleanup()
        await runtime.close()
        if state is not None:
            await asyncio.to_thread(state.close)
        if store is not None:
            await store.close()


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
            await runtime.flush_counters()
            runtime.forget_removed_routes()
            next_flush = now + METRICS_FLUSH_SECONDS


async def _wait_sessions_ended(runtime: Runtime, seconds: float, abort: bool = True) -> None:
    """Wait until every live session has ended or ``seconds`` passed; then cut what is left
    when ``abort``."""
    pending = [s.done for s in runtime.sessions]
    if pending and seconds > 0:
        # asyncio.wait, not a timeout around gather: that would cancel the futures.
        await asyncio.wait(pending, timeout=seconds)
    if abort:
        for session in list(runtime.sessions):
            session.abort()
