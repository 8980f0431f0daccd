"""Standalone mode: `wsgate proxy --manifests DIR` and `wsgate compile DIR`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import (
    QUICKSTART,
    Admin,
    consumer_objects,
    copy_quickstart,
    eventually,
    write_manifests,
)


async def greeting(url: str, key: str) -> str:
    async with connect(url, additional_headers={"apikey": key}) as ws:
        return await ws.recv()


async def test_reloads_on_change_and_keeps_the_last_good_config(tmp_path, start_proxy,
                                                                echo_a, echo_b):
    directory = copy_quickstart(tmp_path / "m", echo_a.port, echo_b.port)
    proxy = start_proxy("--manifests", str(directory))
    first = proxy.wait_for_log(lambda r: r.get("event") == "config applied")
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    assert (await greeting(url, "john-key")).startswith("Request served by")

    # A new consumer file is picked up.
    write_manifests(directory, "jane.yaml", consumer_objects("jane", "jane-key"))
    await eventually(lambda: greeting(url, "jane-key"))

    # A broken edit is refused with its file and field; the last good config stays.
    live = await connect(url, additional_headers={"apikey": "john-key"})
    assert (await live.recv()).startswith("Request served by")
    mark = len(proxy.records)
    route = directory / "route.yaml"
    route.write_text(route.read_text().replace("value: /.ws", "value: no-slash"))
    refused = proxy.wait_for_log(lambda r: r.get("event") == "invalid manifest", since=mark)
    assert refused["problem"].startswith(f"{route}: WsRoute default/echo: spec.paths[0].value")
    proxy.wait_for_log(lambda r: "last good config" in r.get("event", ""), since=mark)
    assert (await greeting(url, "jane-key")).startswith("Request served by")
    await live.send("still open")
    assert await live.recv() == "still open"
    await live.close()

    # Fixing it applies again; removing jane's file revokes her key for new handshakes.
    route.write_text(route.read_text().replace("value: no-slash", "value: /.ws"))
    (directory / "jane.yaml").unlink()

    async def jane_refused():
        try:
            await greeting(url, "jane-key")
        except InvalidStatus as exc:
            status = exc.response.status_code
        else:
            status = 101
        assert status == 401, "jane's key still works"

    await eventually(jane_refused)
    assert (await greeting(url, "john-key")).startswith("Request served by")
    assert first["version"] != proxy.records[-1].get("version")


def run_wsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wsgate", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def test_compile_prints_the_config_as_pushed():
    result = run_wsgate("compile", str(QUICKSTART))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["routes"][0]["name"] == "echo"
    assert config["consumers"][0]["keys"][0]["sha256"]
    assert "john-key\"" not in result.stdout.replace("secret/john-key", "")


def test_compile_reports_invalid_manifests_and_fails(tmp_path):
    directory = copy_quickstart(tmp_path, 1, 2)
    consumer = directory / "consumer.yaml"
    consumer.write_text(consumer.read_text().replace("type: KeyAuth", "type: Password"))
    result = run_wsgate("compile", str(directory))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"error: {consumer} (document 2): WsConsumer default/john: " \
           "spec.credentials[0].type" in result.stderr


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def test_the_compiler_runs_apart_is_restarted_when_it_dies_and_ends_with_the_proxy(
        tmp_path, start_proxy, echo_a, echo_b):
    directory = copy_quickstart(tmp_path / "m", echo_a.port, echo_b.port)
    proxy = start_proxy("--manifests", str(directory))
    first = proxy.wait_for_log(lambda r: r.get("event") == "manifest compiler started")
    proxy.wait_for_log(lambda r: r.get("event") == "config applied")
    assert first["pid"] != proxy.proc.pid
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    live = await connect(url, additional_headers={"apikey": "john-key"})
    assert (await live.recv()).startswith("Request served by")

    # Killed: the proxy says so and starts another; the config and the session stay.
    mark = len(proxy.records)
    os.kill(first["pid"], signal.SIGKILL)
    exited = proxy.wait_for_log(
        lambda r: r.get("event") == "the manifest compiler exited; restarting it", since=mark)
    assert exited["code"] == -signal.SIGKILL
    second = proxy.wait_for_log(
        lambda r: r.get("event") == "manifest compiler started", since=mark)
    assert second["pid"] != first["pid"]
    assert (await greeting(url, "john-key")).startswith("Request served by")
    await live.send("still open")
    assert await live.recv() == "still open"
    await live.close()

    # The new one follows the files, and /readyz no longer reports the exit.
    write_manifests(directory, "jane.yaml", consumer_objects("jane", "jane-key"))
    await eventually(lambda: greeting(url, "jane-key"))
    admin = Admin(proxy.admin_port)
    status, body = await admin.request("GET", "/readyz")
    assert status == 200, body
    assert "refused" not in body

    # The proxy killed (no chance to stop it): the compiler ends on its own.
    proxy.proc.kill()
    proxy.proc.wait()
    await eventually(lambda: _assert_gone(second["pid"]))


async def _assert_gone(pid: int) -> None:
    assert _gone(pid), f"the manifest compiler {pid} outlived its proxy"
