"""Client-chosen values never become metric label values.

Every distinct close code a client sent used to make a new series (20,000 codes: a
4.3 MB /metrics and a 1.2 s scrape that stalled live sessions). Close codes are
grouped; nothing per consumer is a label; a removed route's series go with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct

from prometheus_client.parser import text_string_to_metric_families

from tests.support import eventually, handshake_head

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
