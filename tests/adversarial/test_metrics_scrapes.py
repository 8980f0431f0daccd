"""/metrics against scrapers that misbehave: many at once, and ones that never read the
answer. The admin's scrape handling (admin.Scrapes) on a real aiohttp server and real
sockets, over a registry of 20,000 series (a 1.5 MB answer, more than the socket
buffers hold for a scraper that does not read)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually
from wsgate_proxy.admin import Scrapes
from wsgate_proxy.runtime import Runtime


class Renders:
    """A collector that counts the renders that collected it."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterable[Metric]:
        self.count += 1
        return [GaugeMetricFamily("t_renders", "Renders so far.", value=self.count)]


def registry_of(series: int, renders: Renders) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("t_relayed", "Relayed.", ["route", "direction"], registry=registry)
    for i in range(series // 2):
        for direction in ("client_to_upstream", "upstream_to_client"):
            counter.labels(f"namespace-{i}/route-{i}", direction).inc(i)
    registry.register(renders)
    return registry


@pytest.fixture
async def scraped() -> AsyncIterator[tuple[Scrapes, Renders, str]]:
    renders = Renders()
    scrapes = Scrapes(Runtime(), registry_of(20_000, renders), limit=2, send_seconds=1.0)
    app = web.Application()
    app.router.add_get("/metrics", scrapes.serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield scrapes, renders, f"http://127.0.0.1:{port}/metrics"
    await runner.cleanup()


async def never_reads(url: str) -> socket.socket:
    """A scraper that sends its request and reads nothing (a tiny receive buffer)."""
    port = int(url.split(":")[2].split("/")[0])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


async def test_concurrent_scrapes_share_one_render(scraped) -> None:
    _, renders, url = scraped
    async with aiohttp.ClientSession() as http:
        async def scrape() -> str:
            async with http.get(url) as response:
                assert response.status == 200
                return await response.text()
        bodies = await asyncio.gather(scrape(), scrape())
    assert renders.count == 1
    assert bodies[0] == bodies[1]
    relayed = next(f for f in text_string_to_metric_families(bodies[0]) if f.name == "t_relayed")
    assert sum(s.name == "t_relayed_total" for s in relayed.samples) == 20_000


async def test_scrapers_that_do_not_read_are_bounded_then_dropped(scraped) -> None:
    scrapes, _, url = scraped
    stalled = [await never_reads(url) for _ in range(2)]

    async def both_held() -> None:
        assert scrapes.serving == 2
    await eventually(both_held, timeout=10)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:  # a third: refused, not queued
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"

        async def freed() -> None:  # after send_seconds, both are dropped
            assert scrapes.serving == 0
        await eventually(freed, timeout=10)
        async with http.get(url) as response:
            assert response.status == 200
            assert "t_relayed_total" in await response.text()
    for sock in stalled:
        sock.close()
