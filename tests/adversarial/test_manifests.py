"""Standalone mode fed malformed manifests: the watcher survives, says why, and goes on
applying later edits (a key rotation included); the last good config stays."""

from __future__ import annotations

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import (
    Admin,
    copy_quickstart,
    endpoint_slice,
    eventually,
    write_manifests,
)

MALFORMED = {
    "EndpointSlice port 70000": [endpoint_slice("big", "echo", "127.0.0.1", 70000)],
    "Service ports: 80": [{"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": "other"}, "spec": {"ports": 80}}],
    "generation abc": [{"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "x", "generation": "abc"}, "stringData": {}}],
    "non-string Secret value": [{"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "y"}, "stringData": {"key": 7}}],
}


async def _greeting(url: str, key: str) -> str:
    async with connect(url, additional_headers={"apikey": key}) as ws:
        return await ws.recv()


async def test_an_invalid_set_at_start_says_why_in_readyz_then_a_fix_applies(
        tmp_path, start_proxy, echo_a, echo_b):
    directory = copy_quickstart(tmp_path / "m", echo_a.port, echo_b.port)
    write_manifests(directory, "bad.yaml", MALFORMED["EndpointSlice port 70000"])
    proxy = start_proxy("--manifests", str(directory))
    admin = Admin(proxy.admin_port)

    async def not_ready_saying_why() -> list[str]:
        status, body = await admin.request("GET", "/readyz")
        assert status == 503
        assert body["refused"]
        return body["refused"]

    refused = await eventually(not_ready_saying_why)
    assert any("EndpointSlice default/big: ports[0].port: must be a port number" in line
               for line in refused), refused
    (directory / "bad.yaml").unlink()

    async def ready() -> None:
        status, body = await admin.request("GET", "/readyz")
        assert status == 200, body
        assert "refused" not in body

    await eventually(ready)
    assert (await _greeting(f"ws://127.0.0.1:{proxy.port}/.ws", "john-key")).startswith(
        "Request served by")


async def test_the_watcher_survives_malformed_files_and_applies_a_later_key_rotation(
        tmp_path, start_proxy, echo_a, echo_b):
    directory = copy_quickstart(tmp_path / "m", echo_a.port, echo_b.port)
    proxy = start_proxy("--manifests", str(directory))
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    await eventually(lambda: _greeting(url, "john-key"))
    for name, objects in MALFORMED.items():
        mark = len(proxy.records)
        write_manifests(directory, "bad.yaml", objects)
        record = proxy.wait_for_log(lambda r: r.get("event") == "invalid manifest", since=mark)
        assert "bad.yaml" in record["problem"], (name, record)
        assert (await _greeting(url, "john-key")).startswith("Request served by")  # last good
    (directory / "bad.yaml").unlink()
    # Rotate john's key: the watcher is still there to apply it.
    consumer = directory / "consumer.yaml"
    documents = list(yaml.safe_load_all(consumer.read_text()))
    for doc in documents:
        if doc and doc["kind"] == "Secret":
            doc["stringData"]["key"] = "rotated-key"
    write_manifests(directory, "consumer.yaml", documents)
    await eventually(lambda: _greeting(url, "rotated-key"))

    async def old_key_refused() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await _greeting(url, "john-key")
        assert refused.value.response.status_code == 401

    await eventually(old_key_refused)
