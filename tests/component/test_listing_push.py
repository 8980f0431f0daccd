"""A proxy on a version the operator did not build (the operator restarted after a change
made while it was down) lists what it runs, GET /config/digests, and gets only what
differs; whatever goes wrong with the listing ends in the whole config, never in a
proxy left on something else. Real proxies; a restarted operator is a new Pusher over a
new compiler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.component.test_delta_push import Build, pushed
from tests.support import KEY, TOKEN, Admin, consumer_objects, objects_for
from wsgate_operator import pusher as pusher_module
from wsgate_operator.compiler import Compiled
from wsgate_operator.pusher import ProxyTarget, Pusher
from wsgate_proxy import listing


def rotated(objects: list[dict], secret: str, key: str) -> list[dict]:
    return [{**o, "stringData": {"key": key}} if o["metadata"]["name"] == secret else o
            for o in objects]


async def status_for(port: int, key: str) -> int:
    """What a handshake with this API key gets."""
    try:
        async with connect(f"ws://127.0.0.1:{port}/.ws", additional_headers={"apikey": key}):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def pushed_bytes(pusher: Pusher, kind: str) -> float:
    return pusher.metrics.value("wsgate_operator_push_bytes_total", kind=kind)


async def served_before_the_restart(proxy_admin: int, objects: list[dict]) -> str:
    """The proxy runs ``objects`` as pushed by an operator since gone; its version."""
    first = Pusher(TOKEN, on_change=lambda: None)
    try:
        first.set_targets([ProxyTarget("p", "uid-p", "127.0.0.1", proxy_admin)])
        compiled = Build(objects).next()
        await pushed(first, compiled)
        return compiled.version
    finally:
        await first.close()


@pytest.fixture
def changed_while_down(upstream) -> tuple[list[dict], list[dict]]:
    """The objects before the operator stopped, and after what changed meanwhile: ann's
    key rotated, bob deleted, cid added."""
    before = (objects_for(upstream.port) + consumer_objects("ann", "ann-key")
              + consumer_objects("bob", "bob-key"))
    after = [o for o in rotated(before, "ann-key", "ann-key-2")
             if o["metadata"]["name"] not in ("bob", "bob-key")]
    return before, after + consumer_objects("cid", "cid-key")


async def enforced_after(port: int) -> None:
    assert await status_for(port, "ann-key") == 401
    assert await status_for(port, "ann-key-2") == 101
    assert await status_for(port, "bob-key") == 401
    assert await status_for(port, "cid-key") == 101
    assert await status_for(port, KEY["apikey"]) == 101


async def test_a_restarted_operator_pushes_what_changed_while_it_was_down(
        start_proxy, changed_while_down):
    proxy = start_proxy()
    before, after = changed_while_down
    old_version = await served_before_the_restart(proxy.admin_port, before)
    restarted = Pusher(TOKEN, on_change=lambda: None)
    try:
        restarted.set_targets([ProxyTarget("p", "uid-p", "127.0.0.1", proxy.admin_port)])
        compiled = Build(after).next()
        assert compiled.version != old_version
        await pushed(restarted, compiled)
        assert restarted.running() == {"p": compiled.version}
        assert restarted.metrics.value("wsgate_operator_listings_total", outcome="used") == 1
        assert pushed_bytes(restarted, "full") == 0
        # Three consumers set or removed: a fraction of the whole config.
        assert 0 < pushed_bytes(restarted, "delta") < len(restarted.whole_body()) / 2
        assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[1]["version"] == \
            compiled.version
        await enforced_after(proxy.port)
    finally:
        await restarted.close()


async def test_the_listing_is_what_the_proxy_runs_and_needs_the_token(start_proxy, upstream):
    proxy = start_proxy()
    base = f"http://127.0.0.1:{proxy.admin_port}/config/digests"
    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 503  # no config yet
        objects = objects_for(upstream.port) + consumer_objects("ann", "ann-key")
        version = await served_before_the_restart(proxy.admin_port, objects)
        async with http.get(base) as response:
            assert response.status == 401
        async with http.get(base, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert response.content_type == listing.MEDIA_TYPE
            found = listing.parse(await response.read())
    compiled = Build(objects).next()
    assert found.version == version == compiled.version
    assert found.digests == {item: listing.short(digest)
                             for item, (_body, digest) in compiled.encoded.items()}


# -- fallbacks: a proxy whose listing cannot be used gets the whole config ----------------

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _missing(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=404, text="404: Not Found")  # a proxy older than the listing


async def _garbage(_request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"\x00\xffnot a listing\n" * 10)


async def _huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"version": "0123456789abcdef"}\n')
    for n in range(100_000):  # far past the cap (set low below): the pusher stops reading
        try:
            await response.write(f"consumer default/c{n} {n:016x}\n".encode() * 100)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            break
    return response


class Front:
    """In front of a real proxy's admin API: passes everything through but GET
    /config/digests, which ``answer`` serves (what an older, broken or lying proxy
    would say)."""

    def __init__(self, proxy_admin: int, claimed: Compiled) -> None:
        self.proxy = f"http://127.0.0.1:{proxy_admin}"
        self.claimed = claimed
        self.answer: Answer = self.lying
        self.port = 0
        self._closing = asyncio.Event()

    async def __aenter__(self) -> Front:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/config/digests", self._digests)
        app.router.add_route("*", "/{path:.*}", self._through)
        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._closing.set()
        await self._runner.cleanup()
        await self._http.close()

    async def _digests(self, request: web.Request) -> web.StreamResponse:
        return await self.answer(request)

    async def _through(self, request: web.Request) -> web.Response:
        async with self._http.request(request.method, self.proxy + request.path_qs,
                                      data=await request.read(),
                                      headers=request.headers) as response:
            return web.Response(status=response.status, body=await response.read(),
                                content_type=response.content_type)

    async def _real(self, request: web.Request) -> listing.Listing:
        async with self._http.get(self.proxy + request.path,
                                  headers=request.headers) as response:
            return listing.parse(await response.read())

    async def late(self, _request: web.Request) -> web.StreamResponse:
        """No answer until the test ends."""
        await self._closing.wait()
        return web.Response(status=500)

    async def lying(self, request: web.Request) -> web.StreamResponse:
        """The proxy's version, and the digests of ``claimed`` (what the operator built):
        the delta leaves out what the proxy lacks, and does not lead to its version."""
        real = await self._real(request)
        body = b"".join(listing.render(real.version, [
            (item, digest) for item, (_body, digest) in self.claimed.encoded.items()]))
        return web.Response(body=body, content_type=listing.MEDIA_TYPE)

    async def stale(self, request: web.Request) -> web.StreamResponse:
        """What the proxy runs, under a version it does not run (its delta gets 409)."""
        real = await self._real(request)
        body = b"".join(listing.render("0123456789abcdef", [
            (item, digest << (256 - listing.SHORT_BITS))
            for item, digest in real.digests.items()]))
        return web.Response(body=body, content_type=listing.MEDIA_TYPE)


@pytest.fixture
def short_limits(monkeypatch) -> None:
    monkeypatch.setattr(pusher_module, "MAX_LISTING_BYTES", 256 * 1024)
    monkeypatch.setattr(pusher_module, "LISTING_SECONDS", 0.5)


@pytest.mark.parametrize(("answer", "outcome", "reason", "diverged"), [
    ("missing", "unsupported", "no GET /config/digests", 0),
    ("garbage", "failed", "line 1: not a header", 0),
    ("huge", "failed", f"more than {256 * 1024} bytes", 0),
    ("late", "failed", "Timeout", 0),
    ("lying", "used", None, 1), ("stale", "used", None, 1)])
async def test_a_listing_that_cannot_be_used_ends_in_the_whole_config(
        start_proxy, changed_while_down, short_limits, caplog, answer, outcome, reason,
        diverged):
    proxy = start_proxy()
    before, after = changed_while_down
    await served_before_the_restart(proxy.admin_port, before)
    compiled = Build(after).next()
    answers: dict[str, Answer] = {"missing": _missing, "garbage": _garbage, "huge": _huge}
    restarted = Pusher(TOKEN, on_change=lambda: None)
    try:
        async with Front(proxy.admin_port, compiled) as front:
            front.answer = answers.get(answer) or getattr(front, answer)
            restarted.set_targets([ProxyTarget("p", "uid-p", "127.0.0.1", front.port)])
            await asyncio.wait_for(pushed(restarted, compiled), 20)
            assert restarted.running() == {"p": compiled.version}
    finally:
        await restarted.close()
    assert restarted.metrics.value("wsgate_operator_listings_total", outcome=outcome) == 1
    given_up = [r.reason for r in caplog.records if r.getMessage().startswith("cannot list")]
    assert len(given_up) == (reason is not None), given_up
    assert reason is None or reason in given_up[0], given_up
    # A delta from a listing that was not what the proxy runs: refused, nothing applied.
    assert restarted.metrics.value("wsgate_operator_pushes_total", outcome="diverged") == \
        diverged
    assert pushed_bytes(restarted, "full") == len(restarted.whole_body())
    assert (await Admin(proxy.admin_port).request("GET", "/readyz"))[1]["version"] == \
        compiled.version
    await enforced_after(proxy.port)
