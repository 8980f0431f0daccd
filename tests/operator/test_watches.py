"""The operator's own watches (watches.py) against the API emulator over HTTP, and
against an API server that answers garbage.

What a user sees: a change made while a watch was away is enforced by the proxies
(a deleted consumer's key refused), the metric says why the watch began again, and a
kind whose watch keeps failing does not stop the others."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp.web
import kubernetes
import pytest

from tests.kube.operator import OperatorThread
from tests.scenarios import handshake
from tests.support import KEY, consumer_objects, eventually, objects_for
from wsgate_operator import watches
from wsgate_operator.cache import ClusterCache
from wsgate_operator.kinds import BY_KIND, Kind
from wsgate_operator.kube import KubeApi
from wsgate_operator.metrics import OperatorMetrics
from wsgate_operator.options import OperatorOptions

CR = "wsgate.io/v1alpha1"


def watch_requests(api, plural: str, verb: str) -> int:
    return sum(1 for r in api.requests if r.resource == plural and r.verb == verb)


@pytest.fixture
async def served(api, proxies, operator, apply, upstream):
    """The quickstart (consumer john) and a second consumer, enforced on one proxy."""
    proxies.start("proxy-a", 0)
    apply(*objects_for(upstream.port), *consumer_objects("jane", "jane-key"))
    url = proxies.url("proxy-a")

    async def both_served():
        assert await handshake(url, KEY) == 101
        assert await handshake(url, {"apikey": "jane-key"}) == 101

    await eventually(both_served, timeout=15)
    return url


async def test_a_deletion_lost_to_compaction_is_found_by_listing_again(api, operator, served):
    """The API server restarts with its event log compacted while a consumer is deleted:
    the watch's version is gone (410), the operator lists again, and the consumer the
    list no longer holds is removed (its key refused); the other is still served."""
    lists_before = watch_requests(api, "wsconsumers", "list")
    api.delete(CR, "WsConsumer", "jane")
    api.restart(compact=True)  # before any watch read the DELETED event

    async def jane_refused():
        assert await handshake(served, {"apikey": "jane-key"}) == 401

    await eventually(jane_refused, timeout=15)
    assert await handshake(served, KEY) == 101
    metrics = operator.memo.metrics
    assert metrics.value("wsgate_operator_watch_restarts_total",
                         kind="WsConsumer", reason="expired") >= 1
    assert watch_requests(api, "wsconsumers", "list") > lists_before


async def test_a_watch_the_server_ends_resumes_from_its_version_without_listing(
        api, proxies, apply, upstream, operator_options):
    """The server's timeout ends each watch (here after 1 s): the operator watches again
    from the last version it saw, so nothing is listed again, and a change made after
    that is enforced."""
    operator_options.watch_seconds = 1
    async with OperatorThread(operator_options) as running:
        proxies.start("proxy-a", 0)
        apply(*objects_for(upstream.port))
        url = proxies.url("proxy-a")

        async def john_served():
            assert await handshake(url, KEY) == 101

        await eventually(john_served, timeout=15)

        async def watched_again():
            assert watch_requests(api, "wsconsumers", "watch") >= 3

        await eventually(watched_again, timeout=15)
        apply(*consumer_objects("late", "late-key"))

        async def late_served():
            assert await handshake(url, {"apikey": "late-key"}) == 101

        await eventually(late_served, timeout=15)
        assert watch_requests(api, "wsconsumers", "list") == 1
        assert running.memo.metrics.value("wsgate_operator_watch_restarts_total",
                                          kind="WsConsumer", reason="failed") == 0


async def test_a_secret_that_loses_its_credential_label_is_forgotten(api, served):
    """A Secret the operator no longer may read (its wsgate credential label removed) is
    dropped from its view, as if deleted: the key it held is refused."""
    secret = api.get("v1", "Secret", "jane-key")
    secret["metadata"]["labels"] = {}
    api.apply(secret)

    async def jane_refused():
        assert await handshake(served, {"apikey": "jane-key"}) == 401

    await eventually(jane_refused, timeout=15)
    assert await handshake(served, KEY) == 101


# -- an API server that answers garbage ----------------------------------------------------

GOOD = {"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svc", "namespace": "default", "resourceVersion": "5"},
        "spec": {"ports": [{"port": 80}]}}


Behaviour = Callable[[aiohttp.web.StreamResponse, asyncio.Event], Awaitable[None]]


def hostile_api(behaviour: Behaviour | None) -> aiohttp.web.Application:
    """Lists answer properly; a watch of Services delivers one good event, then a good
    one after each restart; a watch of WsConsumers gets ``behaviour`` (None: the pieces
    in ``served["script"]``, one write each, then quiet); others stay open and quiet."""
    app = aiohttp.web.Application()
    served: dict[str, Any] = {"services": 0, "wsconsumers": 0}
    app[STOP] = stop = asyncio.Event()

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        plural = request.path.rstrip("/").rsplit("/", 1)[-1]
        if request.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {"metadata": {"resourceVersion": "1"}, "items": []})
        served[plural] = served.get(plural, 0) + 1
        response = aiohttp.web.StreamResponse()
        await response.prepare(request)
        if plural == "services":
            name = f"svc-{served[plural]}"
            event = {"type": "ADDED", "object": {
                **GOOD, "metadata": {**GOOD["metadata"], "name": name,
                                     "resourceVersion": str(10 + served[plural])}}}
            await response.write(json.dumps(event).encode() + b"\n")
        elif plural == "wsconsumers" and behaviour is None:
            for piece in served.pop("script", []):
                await response.write(piece)
                await asyncio.sleep(0.002)  # each piece a read of its own
        elif plural == "wsconsumers":
            await behaviour(response, stop)
            return response
        await stop.wait()
        return response

    app.router.add_route("GET", "/{tail:.*}", handle)
    app[SERVED] = served
    return app


SERVED = aiohttp.web.AppKey("served", dict[str, Any])
STOP = aiohttp.web.AppKey("stop", asyncio.Event)


async def garbage_line(response, _stop):
    await response.write(b"<html>not json</html>\n")


async def huge_line(response, _stop):
    chunk = b"x" * 65536
    for _ in range(watches.MAX_LINE_BYTES // len(chunk) + 2):
        await response.write(chunk)


async def error_event(response, _stop):
    await response.write(json.dumps({"type": "ERROR", "object": {
        "kind": "Status", "code": 500, "message": "etcdserver: request timed out"}}).encode()
        + b"\n")


async def no_object(response, _stop):
    await response.write(b'{"type": "ADDED", "object": 7}\n')


async def ends_at_once(_response, _stop):
    pass  # 200 and no event, as fast as it is asked


async def silent(_response, stop):
    await stop.wait()  # never a byte: the client's read timeout ends it


@pytest.fixture
async def hostile(request) -> AsyncIterator[tuple[str, dict[str, int]]]:
    app = hostile_api(request.param)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", app[SERVED]
    finally:
        app[STOP].set()
        await runner.cleanup()


@asynccontextmanager
async def watching(url: str, on_change: Callable[[Kind], None], metrics: OperatorMetrics,
                   **settings: Any) -> AsyncIterator[ClusterCache]:
    """The operator's watches against the API at ``url``, listed and running, into a
    cache of their own; stopped at the end."""
    config = kubernetes.client.Configuration()
    config.host = url
    api = KubeApi(config)
    cache = ClusterCache(lambda _body: None)
    watch = watches.Watches(api, cache, OperatorOptions(), on_change, metrics, **settings)
    tasks: list[asyncio.Task[None]] = []
    try:
        await watch.list_all()
        tasks = watch.run()
        yield cache
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()


@pytest.mark.parametrize("hostile", [garbage_line, huge_line, error_event, no_object,
                                     ends_at_once, silent], indirect=True)
async def test_an_api_answering_garbage_is_retried_and_other_kinds_still_delivered(
        hostile, monkeypatch):
    url, served = hostile
    monkeypatch.setattr(watches, "FIRST_RETRY_SECONDS", 0.05)
    monkeypatch.setattr(watches, "READ_MARGIN_SECONDS", 0.5)
    metrics = OperatorMetrics()
    changed: list[Kind] = []
    async with watching(url, changed.append, metrics, watch_seconds=1) as cache:
        async def retried_and_others_delivered():
            assert served["wsconsumers"] >= 3  # failed, backed off, asked again
            assert metrics.value("wsgate_operator_watch_restarts_total",
                                 kind="WsConsumer", reason="failed") >= 2
            assert BY_KIND["Service"] in changed

        await eventually(retried_and_others_delivered, timeout=15)
        assert ("Service", "default", "svc-1") in cache.keys(BY_KIND["Service"])
        assert cache.keys(BY_KIND["WsConsumer"]) == []


def consumer_event(name: str, version: int) -> bytes:
    return json.dumps({"type": "ADDED", "object": {
        "apiVersion": CR, "kind": "WsConsumer",
        "metadata": {"name": name, "namespace": "default", "generation": 1,
                     "resourceVersion": str(version)},
        "spec": {"credentials": []}}}).encode() + b"\n"


@pytest.mark.parametrize("hostile", [None], indirect=True)
async def test_events_split_across_reads_and_sharing_one_are_each_absorbed(hostile):
    """A watch's bytes come as the network cuts them: an event in 3-byte pieces, two
    events and a bookmark in one read, a blank keep-alive line."""
    url, served = hostile
    stream = (consumer_event("c1", 11) + b"\n" + consumer_event("c2", 12)
              + b'{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}\n')
    first = len(consumer_event("c1", 11))
    pieces = [stream[i:min(i + 3, first)] for i in range(0, first, 3)] + [stream[first:]]
    served["script"] = pieces
    async with watching(url, lambda _kind: None, OperatorMetrics()) as cache:
        async def both_absorbed():
            assert sorted(k[2] for k in cache.keys(BY_KIND["WsConsumer"])) == ["c1", "c2"]

        await eventually(both_absorbed, timeout=10)


@pytest.mark.parametrize("answer", [
    (500, b'{"kind": "Status", "code": 500}', "answered 500"),
    (200, b"<html>maintenance</html>", "the answer is not JSON"),
    (200, b'{"items": "none", "metadata": {}}', "no items or no metadata.resourceVersion"),
])
async def test_a_list_the_operator_cannot_use_stops_its_start_with_what_was_wrong(answer):
    """At start the view must be whole: a list answered with an error or garbage stops
    the start (kopf retries it), naming the kind and what was wrong."""
    status, body, why = answer

    async def listing(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=status, body=body,
                                    content_type="application/json")

    app = aiohttp.web.Application()
    app.router.add_route("GET", "/{tail:.*}", listing)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{port}"
    api = KubeApi(config)
    try:
        watch = watches.Watches(api, ClusterCache(lambda _body: None), OperatorOptions(),
                                lambda _kind: None, OperatorMetrics())
        with pytest.raises(watches.WatchFailed, match=why) as failed:
            await watch.list_all()
        assert str(failed.value).startswith("listing wsroutes in every namespace: ")
    finally:
        await api.close()
        await runner.cleanup()
