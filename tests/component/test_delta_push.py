"""Delta pushes against a real proxy: what changed goes, by key; a proxy on another
version than the operator thinks gets the whole config; the stream is held to its
format line by line."""

from __future__ import annotations

import aiohttp
from websockets.asyncio.client import connect

from tests.support import KEY, TOKEN, Admin, consumer_objects, objects_for
from wsgate_operator.compiler import Snapshot
from wsgate_operator.compiler.build import Compiler
from wsgate_operator.pusher import ProxyTarget, Pusher
from wsgate_proxy import config_stream


async def put_stream(port: int, body: bytes) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.put(
            f"http://127.0.0.1:{port}/config", data=body,
            headers={"Authorization": f"Bearer {TOKEN}",
                     "Content-Type": config_stream.MEDIA_TYPE}) as response:
        return response.status, await response.json()


async def consumers_served(port: int) -> set[str]:
    _, summary = await Admin(port).request("GET", "/config")
    return {c["name"] for c in summary["consumers"]}


class Build:
    """A long-lived compiler over a list of objects the test changes."""

    def __init__(self, objects: list[dict]) -> None:
        self.objects = objects
        self.compiler = Compiler()

    def next(self):
        self.compiler.sync(Snapshot.of(self.objects))
        return self.compiler.result()


async def pushed(pusher: Pusher, compiled) -> None:
    pusher.set_config(compiled)
    await pusher.wait_idle()


async def test_a_change_pushes_only_what_changed_and_the_proxy_follows(start_proxy, upstream):
    proxy = start_proxy()
    build = Build(objects_for(upstream.port) + consumer_objects("ann", "ann-key")
                  + consumer_objects("bob", "bob-key"))
    pusher = Pusher(TOKEN, on_change=lambda: None)
    try:
        pusher.set_targets([ProxyTarget("p", "uid-p", "127.0.0.1", proxy.admin_port)])
        first = build.next()
        await pushed(pusher, first)
        full_bytes = pusher.metrics.value("wsgate_operator_push_bytes_total", kind="full")
        assert pusher.running() == {"p": first.version}
        # Bob's key rotated: one Secret; one consumer item changes.
        secret = next(o for o in build.objects if o["metadata"]["name"] == "bob-key")
        build.objects[build.objects.index(secret)] = {**secret, "stringData": {"key": "new"}}
        second = build.next()
        assert second.changed_items == {("consumer", "default/bob")}
        await pushed(pusher, second)
        delta_bytes = pusher.metrics.value("wsgate_operator_push_bytes_total", kind="delta")
        assert pusher.running() == {"p": second.version}
        assert 0 < delta_bytes < full_bytes / 2
        assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[1]["version"] == \
            second.version
        # The proxy enforces it: the old key is refused, the new one served.
        url = f"ws://127.0.0.1:{proxy.port}/.ws"
        async with connect(url, additional_headers={"apikey": "new"}) as ws:
            await ws.send("rotated")
            assert await ws.recv() == "rotated"
        # A consumer deleted: a del line.
        build.objects = [o for o in build.objects if o["metadata"]["name"] != "ann"]
        pusher.set_config(build.next())
        body, delta = pusher.body_for(second.version)
        assert delta
        assert b"del consumer default/ann" in body
        await pusher.wait_idle()
        assert "default/ann" not in await consumers_served(proxy.admin_port)
        assert pusher.metrics.value("wsgate_operator_push_bytes_total", kind="full") == \
            full_bytes  # every push after the first was a delta
    finally:
        await pusher.close()


async def test_a_delta_to_a_proxy_on_another_version_falls_back_to_a_full_push(
        start_proxy, upstream):
    proxy = start_proxy()
    build = Build(objects_for(upstream.port) + consumer_objects("ann", "ann-key"))
    pusher = Pusher(TOKEN, on_change=lambda: None)
    try:
        pusher.set_targets([ProxyTarget("p", "uid-p", "127.0.0.1", proxy.admin_port)])
        first = build.next()
        await pushed(pusher, first)
        # Behind the operator's back the proxy comes to run something else (another
        # writer, a restore from disk): the pusher still believes it runs ``first``.
        other = Build(objects_for(upstream.port)).next()
        status, answer = await put_stream(proxy.admin_port, config_stream.encode(
            other.version, None, [(k, body) for (k, _), (body, _) in other.encoded.items()]))
        assert (status, answer["version"]) == (200, other.version)
        assert pusher.running() == {"p": first.version}
        build.objects += consumer_objects("bob", "bob-key")
        second = build.next()
        await pushed(pusher, second)
        # The delta was refused (409, naming what the proxy runs), the whole config sent.
        assert pusher.metrics.value("wsgate_operator_pushes_total", outcome="diverged") == 1
        assert pusher.metrics.value("wsgate_operator_push_bytes_total", kind="full") > 0
        assert pusher.running() == {"p": second.version}
        assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[1]["version"] == \
            second.version
        assert await consumers_served(proxy.admin_port) == {"default/ann", "default/bob",
                                                             "default/john"}
    finally:
        await pusher.close()


async def test_the_proxy_refuses_what_does_not_fit_and_keeps_its_config(start_proxy, upstream):
    proxy = start_proxy()
    build = Build(objects_for(upstream.port))
    first = build.next()
    full = config_stream.encode(first.version, None,
                                [(k, body) for (k, _), (body, _) in first.encoded.items()])
    assert (await put_stream(proxy.admin_port, full))[0] == 200
    # A delta from a version the proxy does not run: 409 with the one it does.
    status, answer = await put_stream(proxy.admin_port, config_stream.encode(
        "0000000000000000", "1111111111111111", [], [("consumer", "default/john")]))
    assert (status, answer["version"]) == (409, first.version)
    assert "send the whole config" in answer["error"]
    # A delta that does not lead to the version it claims: 409, nothing applied.
    status, answer = await put_stream(proxy.admin_port, config_stream.encode(
        "2222222222222222", first.version, [], [("consumer", "default/john")]))
    assert (status, answer["version"]) == (409, first.version)
    assert "default/john" in await consumers_served(proxy.admin_port)
    # Garbage: 400 naming the line.
    for body, line in ((b"not json\n", "line 1"),
                       (f'{{"version": "{first.version}", "base": null}}\nset route {{}}\n'
                        .encode(), "line 2: invalid route"),
                       (b'{"version": "x", "base": null}\nmerge route a\n',
                        "line 2: expected")):
        status, answer = await put_stream(proxy.admin_port, body)
        assert status == 400, answer
        assert line in answer["error"], answer
    assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[1]["version"] == \
        first.version
    async with connect(f"ws://127.0.0.1:{proxy.port}/.ws", additional_headers=KEY) as ws:
        await ws.send("still served")
        assert await ws.recv() == "still served"
