"""Client-visible scenarios shared by the operator tier (the API emulator, local proxy
processes) and the kind tier (a real cluster): each takes a Cluster and asserts only
what a WebSocket client and kubectl see."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support import KEY, eventually

CR = "wsgate.io/v1alpha1"


class Cluster(Protocol):
    """What the scenarios need of a cluster running wsgate and the quickstart."""

    def url(self, path: str = "/.ws") -> str: ...
    def get(self, api_version: str, kind: str, name: str) -> dict[str, Any]: ...
    def apply(self, *objects: dict[str, Any]) -> None: ...
    def delete(self, api_version: str, kind: str, name: str) -> None: ...
    async def scale_backend(self, replicas: int) -> None: ...
    async def replace_proxies(self) -> None: ...


async def handshake(url: str, headers: dict[str, str]) -> int:
    try:
        async with connect(url, additional_headers=headers, open_timeout=10):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def echoing(cluster: Cluster, key: str = "john-key") -> ClientConnection:
    ws = await connect(cluster.url(), additional_headers={"apikey": key}, open_timeout=10)
    assert (await ws.recv()).startswith("Request served by ")
    await ws.send("hello")
    assert await ws.recv() == "hello"
    return ws


async def programmed(cluster: Cluster) -> None:
    route = cluster.get(CR, "WsRoute", "echo")
    conditions = {c["type"]: c["status"] for c in route["status"]["conditions"]}
    assert conditions["Programmed"] == "True", route["status"]


async def quickstart(cluster: Cluster) -> None:
    """No key: 401 before any upgrade; john's key: greeted and echoed."""
    await eventually(lambda: programmed(cluster), timeout=60, interval=0.5)
    assert await handshake(cluster.url(), {}) == 401
    await (await echoing(cluster)).close()


async def key_rotation(cluster: Cluster, within: float) -> None:
    """A rotated key: live sessions on the old key close with 1008; old refused, new works."""
    live = await echoing(cluster)
    secret = cluster.get("v1", "Secret", "john-key")
    secret["data"] = {"key": base64.b64encode(b"john-key-2").decode()}
    secret.pop("stringData", None)
    written = time.monotonic()
    cluster.apply(secret)
    await asyncio.wait_for(live.wait_closed(), within)
    assert time.monotonic() - written < within
    assert (live.close_code, live.close_reason) == (1008, "credential revoked")
    assert await handshake(cluster.url(), KEY) == 401
    await (await echoing(cluster, "john-key-2")).close()


async def consumer_deletion(cluster: Cluster, other_key: str, within: float) -> None:
    """A deleted consumer's sessions close; another consumer's stay."""
    john = await echoing(cluster)
    other = await echoing(cluster, other_key)
    cluster.delete(CR, "WsConsumer", "john")
    await asyncio.wait_for(john.wait_closed(), within)
    assert john.close_code == 1008
    await other.send("still here")
    assert await other.recv() == "still here"
    await other.close()


async def backend_scaling(cluster: Cluster) -> None:
    """New sessions spread over the backend's current endpoints, as it scales 2 -> 3 -> 1."""
    async def served(count: int) -> set[str]:
        names = set()
        for _ in range(count):
            async with connect(cluster.url(), additional_headers=KEY, open_timeout=10) as ws:
                names.add((await ws.recv()).removeprefix("Request served by "))
        return names

    for replicas in (2, 3, 1):
        await cluster.scale_backend(replicas)

        async def spread(expected: int = replicas) -> None:
            assert len(await served(3 * expected)) == expected

        await eventually(spread, timeout=90, interval=0.5)


async def proxies_replaced(cluster: Cluster) -> None:
    """A rolling replacement of every proxy mid-traffic: live sessions end with a close
    frame (1001, going away), never cut; reconnecting clients are served by the new ones."""
    live = await echoing(cluster)
    await cluster.replace_proxies()
    await asyncio.wait_for(live.wait_closed(), 60)
    assert live.close_code == 1001
    await eventually(lambda: _echoes(cluster), timeout=60, interval=0.5)


async def _echoes(cluster: Cluster) -> None:
    await (await echoing(cluster)).close()


SCENARIOS = ("quickstart", "key_rotation", "consumer_deletion", "backend_scaling",
             "proxies_replaced")


async def run(name: str, cluster: Cluster, *, revocation_within: float) -> None:
    """One scenario on a cluster with the quickstart and a second consumer, jane
    (key jane-key); revocations must close sessions within ``revocation_within`` s."""
    await quickstart(cluster)
    if name == "key_rotation":
        await key_rotation(cluster, within=revocation_within)
    elif name == "consumer_deletion":
        await consumer_deletion(cluster, "jane-key", within=revocation_within)
    elif name == "backend_scaling":
        await backend_scaling(cluster)
        await cluster.scale_backend(2)
    elif name == "proxies_replaced":
        await proxies_replaced(cluster)
