"""The admin API of a real proxy process: config pushes, probes, summaries, metrics."""

from __future__ import annotations

import json

from tests.support import Admin, compile_objects, metric_value, quickstart_objects


async def test_ready_only_once_a_config_is_pushed(start_proxy, echo_a, echo_b):
    admin = Admin(start_proxy().admin_port)
    assert (await admin.request("GET", "/healthz"))[0] == 200
    status, body = await admin.request("GET", "/readyz")
    assert (status, body["status"]) == (503, "no config loaded yet")

    config = compile_objects(quickstart_objects(echo_a.port, echo_b.port))
    status, body = await admin.put_config(config)
    assert status == 200
    assert body == {"version": config["version"], "changed": True}
    assert (await admin.request("GET", "/readyz")) == (
        200, {"status": "ready", "version": config["version"]})
    # The same version again changes nothing.
    assert (await admin.put_config(config))[1]["changed"] is False


async def test_config_writes_need_the_token(start_proxy, echo_a, echo_b):
    admin = Admin(start_proxy().admin_port)
    config = compile_objects(quickstart_objects(echo_a.port, echo_b.port))
    status, _ = await admin.put_config(config, token=None)
    assert status == 401
    status, _ = await admin.put_config(config, token="wrong")
    assert status == 401
    assert (await admin.request("GET", "/readyz"))[0] == 503


async def test_without_a_configured_token_writes_are_refused(start_proxy, echo_a, echo_b):
    admin = Admin(start_proxy(token=None).admin_port, token=None)
    status, body = await admin.put_config(compile_objects(quickstart_objects(1, 2)))
    assert status == 403
    assert "WSGATE_ADMIN_TOKEN" in body["error"]


async def test_invalid_config_is_400_with_the_field(start_proxy):
    admin = Admin(start_proxy().admin_port)
    status, body = await admin.put_config({"routes": [{"name": "x"}]})
    assert status == 400
    fields = {e["field"] for e in body["errors"]}
    assert {"routes.0.namespace", "routes.0.paths", "routes.0.backend"} <= fields
    status, body = await admin.request("PUT", "/config", json=None)
    assert status == 400


async def test_a_version_that_is_not_the_content_hash_is_refused(start_proxy):
    admin = Admin(start_proxy().admin_port)
    config = compile_objects(quickstart_objects(1, 2))
    config["version"] = "made-up"
    status, body = await admin.put_config(config)
    assert status == 400
    assert "content hash" in body["error"]


async def test_get_config_summarizes_without_credentials(start_proxy, echo_a, echo_b):
    admin = Admin(start_proxy().admin_port)
    config = compile_objects(quickstart_objects(echo_a.port, echo_b.port))
    await admin.put_config(config)
    status, body = await admin.request("GET", "/config")
    assert status == 200
    assert body["version"] == config["version"]
    assert body["routes"][0]["name"] == "default/echo"
    assert body["routes"][0]["endpoints"] == sorted(
        [f"127.0.0.1:{echo_a.port}", f"127.0.0.1:{echo_b.port}"])
    assert body["consumers"] == [{"name": "default/john", "username": "john", "credentials": 1}]
    digest = config["consumers"][0]["keys"][0]["sha256"]
    assert digest not in json.dumps(body)
    assert (await admin.request("GET", "/config", token=None))[0] == 401


async def test_metrics_report_config_and_handshakes(start_proxy, echo_a, echo_b):
    import websockets

    proxy = start_proxy()
    admin = Admin(proxy.admin_port)
    config = compile_objects(quickstart_objects(echo_a.port, echo_b.port))
    await admin.put_config(config)
    url = f"ws://127.0.0.1:{proxy.port}/.ws"
    async with websockets.connect(url, additional_headers={"apikey": "john-key"}) as ws:
        await ws.recv()
        text = await admin.metrics()
        assert metric_value(text, "wsgate_sessions_active", route="default/echo") == 1
        assert 'consumer="' not in text  # consumers come and go: never a label
    try:
        async with websockets.connect(url):
            pass
    except websockets.InvalidStatus:
        pass
    text = await admin.metrics()
    assert metric_value(text, "wsgate_config_info", version=config["version"]) == 1
    assert metric_value(text, "wsgate_handshakes_total", route="default/echo", outcome="ok") == 1
    assert metric_value(text, "wsgate_handshakes_total",
                        route="default/echo", outcome="unauthorized") == 1
    assert metric_value(text, "wsgate_upstream_connect_seconds_count", route="default/echo") == 1
    assert "john-key" not in text
