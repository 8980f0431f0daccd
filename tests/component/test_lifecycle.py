"""Stopping and restarting a proxy: drain on SIGTERM, the saved config on start."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect

from tests.support import KEY, Admin, compile_objects, objects_for


async def test_sigterm_drains_then_closes_with_1001(start_proxy, upstream):
    proxy = start_proxy("--drain-seconds", "1.5")
    admin = Admin(proxy.admin_port)
    await admin.put_config(compile_objects(objects_for(upstream.port)))
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    ws = await connect(url, additional_headers=KEY)
    proxy.proc.terminate()
    proxy.wait_for_log(lambda r: r.get("event") == "stopping")
    started = time.monotonic()

    status, body = await admin.request("GET", "/readyz")
    assert (status, body["status"]) == (503, "draining")
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        await connect(url, additional_headers=KEY, open_timeout=2)
    await ws.send("during the drain")  # the live session goes on
    assert await ws.recv() == "during the drain"

    await asyncio.wait_for(ws.wait_closed(), 6)
    assert time.monotonic() - started >= 1.2
    assert (ws.close_code, ws.close_reason) == (1001, "proxy shutting down")
    assert await asyncio.to_thread(proxy.proc.wait, 10) == 0


async def test_drain_ends_early_when_the_last_session_ends(start_proxy, upstream):
    proxy = start_proxy("--drain-seconds", "30")
    await Admin(proxy.admin_port).put_config(compile_objects(objects_for(upstream.port)))
    ws = await connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY)
    proxy.proc.terminate()
    proxy.wait_for_log(lambda r: r.get("event") == "stopping")
    await ws.close()
    assert await asyncio.to_thread(proxy.proc.wait, 10) == 0


async def test_a_restarted_proxy_serves_its_saved_config_at_once(start_proxy, upstream, tmp_path):
    first = start_proxy("--state-dir", str(tmp_path))
    config = compile_objects(objects_for(upstream.port))
    await Admin(first.admin_port).put_config(config)
    first.stop()

    second = start_proxy("--state-dir", str(tmp_path))
    assert await Admin(second.admin_port).request("GET", "/readyz") == (
        200, {"status": "ready", "version": config["version"]})
    async with connect(f"ws://127.0.0.1:{second.port}/.ws", additional_headers=KEY) as ws:
        await ws.send("served from the saved config")
        assert await ws.recv() == "served from the saved config"


async def test_a_damaged_saved_config_is_ignored(start_proxy, tmp_path):
    (tmp_path / "config.json").write_text('{"routes": [')
    proxy = start_proxy("--state-dir", str(tmp_path))
    proxy.wait_for_log(lambda r: "not valid" in r.get("event", ""))
    assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[0] == 503
