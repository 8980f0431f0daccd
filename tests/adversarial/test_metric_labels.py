"""Client-chosen values never become metric label values.

Every distinct close code a client sent used to make a new series (20,000 codes: a
4.3 MB /metrics and a 1.2 s scrape that stalled live sessions). Close codes are
grouped; nothing per consumer is a label; a removed route's series go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import struct
import time

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.support import KEY, eventually, handshake_head

CODES = [*range(4000, 4400), *range(3000, 3100), 1004, 1016, 2999, 5000, 65535, 0, 999]


async def _close_with(port: int, code: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_head("/.ws", "h", "apikey: john-key"))
    await reader.readuntil(b"\r\n\r\n")
    mask = os.urandom(4)
    payload = struct.pack("!H", code) + b"bye"
    writer.write(b"\x88\x85" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(), 5)  # the close reply, then the end
    writer.close()


def series(text: str, name: str) -> list[dict[str, str]]:
    return [sample.labels for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


async def test_distinct_close_codes_make_a_bounded_set_of_series(serve):
    served = await serve()
    port = served.proxy.port
    gate = asyncio.Semaphore(30)

    async def one(code: int) -> None:
        async with gate:
            await _close_with(port, code)

    await asyncio.gather(*(one(code) for code in CODES))

    async def all_counted() -> str:
        text = await served.admin.metrics()
        total = sum(s for s in (
            sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "wsgate_sessions_closed_total"))
        assert total == len(CODES)
        return text

    text = await eventually(all_counted)
    closed = series(text, "wsgate_sessions_closed_total")
    codes = sorted({labels["code"] for labels in closed})
    print(f"FIGURES close codes: {len(CODES)} distinct codes sent -> {len(closed)} series "
          f"({codes}), /metrics {len(text)} bytes")
    assert set(codes) <= {"4xxx", "3xxx", "invalid", "1004", "1005", "1006"}
    assert len(closed) <= 6
    assert "4001" not in text
    assert all(set(labels) == {"route"} for labels in series(text, "wsgate_sessions_active"))


async def test_a_removed_routes_series_go_with_it(serve):
    served = await serve()
    await _close_with(served.proxy.port, 1000)
    assert 'route="default/echo"' in await served.admin.metrics()
    route = next(o for o in served.objects if o["kind"] == "WsRoute")
    route["metadata"]["name"] = "renamed"
    await served.push()

    async def forgotten() -> None:
        text = await served.admin.metrics()
        assert 'route="default/echo"' not in text

    await eventually(forgotten)


async def test_a_scrape_of_many_series_does_not_stall_live_sessions(serve, upstream):
    served = await serve()
    route = next(o for o in served.objects if o["kind"] == "WsRoute")
    for i in range(400):
        extra = copy.deepcopy(route)
        extra["metadata"]["name"] = f"r{i}"
        extra["spec"]["paths"] = [{"type": "Exact", "value": f"/r{i}"}]
        served.objects.append(extra)
    await served.push()
    gate = asyncio.Semaphore(20)

    async def session_on(i: int) -> None:  # every route gets its series
        async with gate, connect(f"{served.base}/r{i}", additional_headers=KEY) as ws:
            await ws.send("x")
            await ws.recv()

    await asyncio.gather(*(session_on(i) for i in range(400)))
    async with connect(served.url, additional_headers=KEY) as live:
        quiet: list[float] = []
        during: list[float] = []  # round trips that overlapped a scrape
        scraping = False
        scrapes: list[float] = []
        done = asyncio.Event()

        async def ping() -> None:
            while not done.is_set():
                overlapped = scraping
                started = time.monotonic()
                await live.send("ping")
                await live.recv()
                (during if overlapped or scraping else quiet).append(time.monotonic() - started)
                await asyncio.sleep(0.001)

        pinger = asyncio.create_task(ping())
        await asyncio.sleep(0.3)
        for _ in range(5):
            scraping = True
            started = time.monotonic()
            text = await served.admin.metrics()
            scrapes.append(time.monotonic() - started)
            scraping = False
            await asyncio.sleep(0.05)
        done.set()
        await pinger
    during.sort()
    median = during[len(during) // 2]
    print(f"FIGURES scrape: 401 routes, {text.count(chr(10))} lines, {len(text)} bytes, "
          f"scrape {min(scrapes) * 1000:.0f}-{max(scrapes) * 1000:.0f} ms; live round trips "
          f"during scrapes: {len(during)}, median {median * 1000:.0f} ms, max "
          f"{during[-1] * 1000:.0f} ms (quiet median {sorted(quiet)[len(quiet) // 2] * 1000:.0f}"
          " ms)")
    # Rendering holds the event loop no longer than a slice at a time: round trips go on
    # during a scrape (were the render one hold of the loop, at most one or two round
    # trips would overlap each scrape: the one in flight and the next).
    assert len(during) >= 3 * len(scrapes)
    assert median < 0.25 * min(scrapes), during
