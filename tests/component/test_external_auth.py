"""External: a real proxy asks a separate forward-auth server process that checks a
session cookie; what reached the auth server and what reached the upstream."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import eventually, metric_value, objects_for, route, write_manifests

pytestmark = pytest.mark.timeout(60)


def external(url: str, **settings) -> dict:
    return {"methods": ["External"],
            "external": {"url": url, "responseHeaders": ["X-User-Id", "X-User-Roles"],
                         "identityHeader": "X-User-Id", **settings}}


@pytest.fixture
async def ext(serve, auth_server):
    """A proxy with the quickstart plus routes onto the same echo: /ext asks the auth
    server; the test may add more with ``add``."""
    await auth_server.reset()

    async def start(*routes, url_query: str = "", spec: dict | None = None, **settings):
        return await serve(route("ext", "/ext", external(auth_server.url(url_query),
                                                         **settings), **(spec or {})),
                           *routes)
    return start


async def rechecks(served, result: str, at_least: int) -> None:
    """Wait until the route's rechecks with this result number ``at_least``."""
    async def reached() -> None:
        assert metric_value(await served.admin.metrics(), "wsgate_external_auth_total",
                            route="default/ext", phase="recheck", result=result) >= at_least
    await eventually(reached)


async def expired(served, action: str, at_least: int) -> None:
    """Raises until the route's sessions whose credential ended number ``at_least``."""
    assert metric_value(await served.admin.metrics(), "wsgate_credentials_expired_total",
                        route="default/ext", action=action) >= at_least


async def refused(url: str, **kwargs):
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    return info.value.response


async def test_a_session_cookie_opens_the_session(ext, auth_server, upstream):
    served = await ext()
    url = served.base + "/ext/room?x=1"
    # No session: the auth server's own 401, passed on as it gave it.
    response = await refused(url)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Cookie realm="app"'
    assert response.headers["Location"] == "/login"
    assert response.body == b"please log in at /login\n"

    session = await auth_server.login("alice")
    async with connect(url, additional_headers={
        "Cookie": f"session={session}; theme=dark",
        "X-User-Id": "mallory", "X_User_Id": "mallory", "x-user-roles": "admin",
        "Origin": "http://127.0.0.1",
    }, subprotocols=["chat.v1"]) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
    seen = upstream.requests[-1].headers
    # The auth server's answer, never the client's forgeries (under any spelling).
    assert seen.get_all("X-User-Id") == ["alice"]
    assert seen.get_all("X-User-Roles") == ["chat,read"]
    assert "X_User_Id" not in seen
    assert seen["X-Consumer-Username"] == "alice"
    assert "Cookie" not in seen  # hideCredentials: what the auth server reads stays here

    call = (await auth_server.calls())[-1]
    assert call["cookie"] == [f"session={session}; theme=dark"]
    assert call["x-forwarded-method"] == ["GET"]
    assert call["x-forwarded-proto"] == ["http"]
    assert call["x-forwarded-host"] == [f"127.0.0.1:{served.proxy.port}"]
    assert call["x-forwarded-uri"] == ["/ext/room?x=1"]
    assert call["x-forwarded-for"] == ["127.0.0.1"]
    assert call["x-original-url"] == [f"http://127.0.0.1:{served.proxy.port}/ext/room?x=1"]
    # Never the upgrade: an auth server that sees one breaks.
    for name in call:
        assert name not in ("upgrade", "connection", "origin", "x-user-id")
        assert not name.startswith("sec-websocket-")


async def test_a_403_is_passed_on_and_other_answers_fail_closed(ext, auth_server):
    served = await ext(route("forbid", "/forbid", external(auth_server.url("status=403"))),
                       route("broken", "/broken", external(auth_server.url("status=500"))),
                       route("moved", "/moved", external(auth_server.url("status=302"))),
                       route("nobody", "/nobody", external(auth_server.url("no_identity=1"))))
    session = await auth_server.login("bob")
    cookie = {"Cookie": f"session={session}"}
    response = await refused(served.base + "/forbid", additional_headers=cookie)
    assert (response.status_code, response.body) == (403, b"as asked\n")
    for path, words in (("/broken", "answered 500"), ("/moved", "answered 302"),
                        ("/nobody", "no usable 'X-User-Id' header")):
        response = await refused(served.base + path, additional_headers=cookie)
        assert response.status_code == 503, path
        assert response.headers["Retry-After"] == "1"
        assert "authentication is unavailable" in response.body.decode()
        # Why is the operator's: in the log (one line a second per route at most).
        served.proxy.wait_for_log(lambda r, words=words: r.get("event") == "external auth failed"
                                  and words in str(r.get("error")), timeout=2)
    metrics = await served.admin.metrics()
    assert metric_value(metrics, "wsgate_external_auth_total", route="default/broken",
                        phase="handshake", result="error") == 1
    assert metric_value(metrics, "wsgate_handshakes_total", route="default/broken",
                        outcome="auth_unavailable") == 1
    assert metric_value(metrics, "wsgate_external_auth_total", route="default/forbid",
                        phase="handshake", result="deny") == 1


async def test_allow_decisions_are_cached_for_the_same_headers_only(ext, auth_server):
    served = await ext(route("short", "/short", external(auth_server.url("max_age=1"),
                                                         cacheSeconds=60)),
                       cacheSeconds=60)
    alice = {"Cookie": f"session={await auth_server.login('alice')}"}
    bob = {"Cookie": f"session={await auth_server.login('bob')}"}
    for _ in range(3):
        async with connect(served.base + "/ext", additional_headers=alice):
            pass
    assert len(await auth_server.calls()) == 1
    async with connect(served.base + "/ext", additional_headers=bob):
        pass
    assert len(await auth_server.calls()) == 2  # other headers: asked again
    await refused(served.base + "/ext")  # a refusal is never cached
    await refused(served.base + "/ext")
    assert len(await auth_server.calls()) == 4
    # The answer's own max-age (1 s) is shorter than cacheSeconds: it wins.
    await auth_server.reset()
    async with connect(served.base + "/short", additional_headers=alice):
        pass
    async with connect(served.base + "/short", additional_headers=alice):
        pass
    assert len(await auth_server.calls()) == 1
    await asyncio.sleep(1.1)
    async with connect(served.base + "/short", additional_headers=alice):
        pass
    assert len(await auth_server.calls()) == 2
    metrics = await served.admin.metrics()
    assert metric_value(metrics, "wsgate_external_auth_total", route="default/ext",
                        phase="handshake", result="cached") == 2


async def test_a_recheck_closes_the_session_of_a_user_who_logged_out(ext, auth_server):
    served = await ext(recheckSeconds=0.5)
    alice = await auth_server.login("alice")
    bob = await auth_server.login("bob")
    ws_alice = await connect(served.base + "/ext", additional_headers={
        "Cookie": f"session={alice}"})
    ws_bob = await connect(served.base + "/ext", additional_headers={
        "Cookie": f"session={bob}"})
    await rechecks(served, "allow", 2)  # both rechecked and allowed: both stay
    await auth_server.logout(alice)
    await asyncio.wait_for(ws_alice.wait_closed(), 2)
    assert (ws_alice.close_code, ws_alice.close_reason) == (1008, "credential revoked")
    await ws_bob.send("still")
    assert await ws_bob.recv() == "still"
    await ws_bob.close()
    assert metric_value(await served.admin.metrics(), "wsgate_external_auth_total",
                        route="default/ext", phase="recheck", result="deny") == 1


@pytest.mark.parametrize("policy", ["Close", "Keep"])
async def test_the_answers_lifetime_ends_the_session(ext, auth_server, policy):
    served = await ext(url_query="max_age=2", spec={"onCredentialExpired": policy})
    cookie = {"Cookie": f"session={await auth_server.login('alice')}"}
    opened = time.monotonic()
    ws = await connect(served.base + "/ext", additional_headers=cookie)
    if policy == "Close":
        await asyncio.wait_for(ws.wait_closed(), 4)
        assert (ws.close_code, ws.close_reason) == (1008, "credential expired")
        assert time.monotonic() - opened > 1.9  # not before the answer's lifetime ended
    else:
        await eventually(lambda: expired(served, "kept", 1))  # its lifetime passed
        await ws.send("kept")
        assert await ws.recv() == "kept"
        await ws.close()


async def test_a_recheck_renews_the_lifetime(ext, auth_server):
    served = await ext(url_query="max_age=2", recheckSeconds=1)
    ws = await connect(served.base + "/ext", additional_headers={
        "Cookie": f"session={await auth_server.login('alice')}"})
    opened = time.monotonic()
    # Rechecks come every 0.8-1 s: by the third the first answer's 2 s have passed.
    await rechecks(served, "allow", 3)
    assert time.monotonic() - opened > 2.0
    await ws.send("renewed")
    assert await ws.recv() == "renewed"
    await ws.close()


async def test_the_identity_counts_for_per_consumer_limits(ext, auth_server):
    served = await ext(spec={"limits": {"maxConnectionsPerConsumer": 1},
                             "backend": {"service": {"name": "echo", "port": 8080},
                                         "loadBalancing": {"algorithm": "ConsistentHash",
                                                           "hashOn": "Consumer"}}})
    alice = {"Cookie": f"session={await auth_server.login('alice')}"}
    bob = {"Cookie": f"session={await auth_server.login('bob')}"}
    async with connect(served.base + "/ext", additional_headers=alice):
        assert (await refused(served.base + "/ext", additional_headers=alice)
                ).status_code == 429
        async with connect(served.base + "/ext", additional_headers=bob):
            pass


async def test_standalone_mode_serves_the_same_manifests(start_proxy, auth_server, upstream,
                                                         tmp_path):
    """`wsgate proxy --manifests DIR`: External and a provider route from YAML files."""
    objects = [*objects_for(upstream.port),
               route("ext", "/ext", external(auth_server.url(), recheckSeconds=0.5))]
    write_manifests(tmp_path, "app.yaml", objects)
    proxy = start_proxy("--manifests", str(tmp_path))
    proxy.wait_for_log(lambda r: r.get("event") == "config applied")
    session = await auth_server.login("carol")
    ws = await connect(f"ws://127.0.0.1:{proxy.port}/ext",
                       additional_headers={"Cookie": f"session={session}"})
    await ws.send("hi")
    assert await ws.recv() == "hi"
    assert upstream.requests[-1].headers["X-User-Id"] == "carol"
    await auth_server.logout(session)
    await asyncio.wait_for(ws.wait_closed(), 2)
    assert (ws.close_code, ws.close_reason) == (1008, "credential revoked")


async def test_an_auth_server_down_for_three_rechecks_ends_the_session(serve):
    """A blip passes (one recheck without an answer changes nothing), but an outage
    cannot keep a logged-out user's socket open for as long as it lasts."""
    from tests.peers import AuthServerProcess

    server = AuthServerProcess().start()
    try:
        served = await serve(route("ext", "/ext", external(server.url(), recheckSeconds=0.5)))
        ws = await connect(served.base + "/ext", additional_headers={
            "Cookie": f"session={await server.login('alice')}"})
        await rechecks(served, "allow", 1)  # it answers: the session stays
    finally:
        server.stop()
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert (ws.close_code, ws.close_reason) == (1013, "credential not rechecked")
    assert metric_value(await served.admin.metrics(), "wsgate_external_auth_total",
                        route="default/ext", phase="recheck", result="error") == 3


async def test_identical_handshakes_in_flight_share_one_call(ext, auth_server):
    """50 tabs opened at once with one cookie: one auth call, every tab served."""
    served = await ext(url_query="sleep=0.5", cacheSeconds=60)
    cookie = {"Cookie": f"session={await auth_server.login('alice')}"}

    async def tab() -> None:
        async with connect(served.base + "/ext", additional_headers=cookie, open_timeout=10):
            pass

    await asyncio.gather(*(tab() for _ in range(50)))
    assert len(await auth_server.calls()) == 1
    metrics = await served.admin.metrics()
    assert sum(metric_value(metrics, "wsgate_external_auth_total", route="default/ext",
                            phase="handshake", result=r) for r in ("shared", "cached")) == 49
