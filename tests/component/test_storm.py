"""Reconnect storms: a fleet of clients connecting at once is served whole, refused only
by a limit, and the listeners queue what the proxy has not accepted yet (--backlog).

The time a storm takes is a benchmark figure (bench/relay.py), not asserted here.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import KEY

STORM = 200


async def _one(url: str) -> int | str:
    """101 and an echo, or the status the handshake was refused with."""
    try:
        async with connect(url, additional_headers=KEY, open_timeout=60) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code
    except OSError as exc:  # refused or reset by the proxy's listener
        return type(exc).__name__


async def storm(url: str, clients: int) -> Counter[int | str]:
    return Counter(await asyncio.gather(*(_one(url) for _ in range(clients))))


async def test_a_storm_is_served_whole(serve):
    served = await serve()
    assert await storm(served.url, STORM) == {101: STORM}


async def test_in_a_storm_only_the_limit_refuses(serve):
    served = await serve(limits={"maxConnections": STORM // 2})

    async def held(url: str) -> tuple[int | str, object]:
        try:
            ws = await connect(url, additional_headers=KEY, open_timeout=60)
        except InvalidStatus as exc:
            return exc.response.status_code, None
        return 101, ws

    results = await asyncio.gather(*(held(served.url) for _ in range(STORM)))
    try:
        assert Counter(status for status, _ in results) == {101: STORM // 2, 503: STORM // 2}
    finally:
        await asyncio.gather(*(ws.close() for _, ws in results if ws is not None))


def _backlog(port: int) -> int:
    """The backlog of the socket listening on this port, as the kernel reports it (the
    Send-Q column of `ss` for a listening socket)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[2])


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


async def test_the_listeners_backlog(start_proxy):
    proxy = start_proxy("--backlog", "77", "--tls-listen", "127.0.0.1:0")
    assert _backlog(proxy.port) == 77
    assert _backlog(proxy.address("tls_listen")[1]) == 77
    default = start_proxy()
    assert _backlog(default.port) == min(4096, _somaxconn())
