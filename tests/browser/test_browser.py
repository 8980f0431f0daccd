"""A real browser (Debian's Chromium, driven by Playwright) on a page served from
127.0.0.1: it logs in with a session cookie and opens `new WebSocket(...)` to an
External route; after logout a recheck closes the session with 1008; and a token from
the OpenID Connect provider, offered as a subprotocol entry, opens a JWT route."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from playwright.async_api import async_playwright

from tests.support import route
from wsgate_proxy.credentials import encode_bearer_subprotocol

pytestmark = pytest.mark.timeout(90)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic"]


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("Chromium is not installed: apt-get install chromium "
                           "(.ci/run does it when it is missing)")
    return binary


@pytest.fixture
async def page():
    with tempfile.TemporaryDirectory(prefix="wsgate-chromium-") as profile:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS)
            try:
                yield await context.new_page()
            finally:
                await context.close()


async def test_a_browser_app_logs_in_and_out_and_uses_an_oidc_token(serve, auth_server, oidc,
                                                                    page, upstream):
    origin = auth_server.base
    served = await serve(
        route("chat", "/chat", {"methods": ["External"], "external": {
            "url": auth_server.url(), "identityHeader": "X-User-Id",
            "responseHeaders": ["X-User-Id"], "recheckSeconds": 0.5}},
            allowedOrigins=[origin]),
        route("api", "/api", {"methods": ["JWT"], "jwt": {"providers": [
            {"issuer": oidc.issuer, "audiences": ["chat-app"]}]}},
            allowedOrigins=[origin]))
    proxy = f"ws://127.0.0.1:{served.proxy.port}"
    await page.goto(origin + "/")

    # Not logged in: the handshake is refused (the browser sees no open).
    refused = await page.evaluate(f"open_socket('anon', '{proxy}/chat')")
    assert refused["opened"] is False

    assert await page.evaluate("login('alice')") == 200
    opened = await page.evaluate(f"open_socket('chat', '{proxy}/chat')")
    assert opened == {"opened": True, "protocol": "", "message": "hello from chat"}
    seen = upstream.requests[-1].headers
    assert (seen["X-User-Id"], seen["X-Consumer-Username"]) == ("alice", "alice")
    assert seen["Origin"] == origin

    assert await page.evaluate("logout()") == 200
    closed = await page.evaluate("wait_closed('chat')")
    assert (closed["code"], closed["reason"]) == (1008, "credential revoked")

    token = await oidc.token("bob")
    entry = encode_bearer_subprotocol(token)
    opened = await page.evaluate("([url, entry]) => open_socket('api', url, [entry])",
                                 [proxy + "/api", entry])
    assert opened == {"opened": True, "protocol": entry, "message": "hello from api"}
    assert upstream.requests[-1].headers["X-Consumer-Username"] == "bob"
