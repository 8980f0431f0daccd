"""A forward-auth server, as an application would run one: a separate process that checks
a session cookie. The External tests and the browser test ask it; it records what it
was asked.

    python -m tests.auth_server [--tls CERT KEY]   # prints {"port": N} when listening

- ``GET /`` the app's page (the browser test's), ``POST /login?user=NAME`` sets the
  ``session`` cookie, ``POST /logout`` ends the session (the cookie stops working);
- ``GET /verify``: the session's user in ``X-User-Id`` and ``X-User-Roles`` (200), or 401
  with ``WWW-Authenticate``, ``Location: /login`` and a body; query parameters shape the
  answer: ``max_age=N`` (Cache-Control), ``status=N`` (answer N whatever the session),
  ``sleep=S`` (answer after S seconds), ``huge=1`` (a 401 with a 1 MiB body),
  ``huge_allow=1`` (a 200 with 100 ``X-User-Roles`` headers of 8000 bytes),
  ``garbage=1`` (bytes that are not HTTP), ``no_identity=1`` (200 without X-User-Id);
- ``GET /_calls`` the headers of every /verify call so far, ``POST /_reset`` forgets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import sys
from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).resolve().parent / "browser" / "app.html"


class AuthServer:
    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}
        self.calls: list[list[list[str]]] = []

    async def page(self, _request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        user = request.query.get("user", "alice")
        sid = secrets.token_urlsafe(16)
        self.sessions[sid] = user
        response = web.json_response({"user": user, "session": sid})
        response.set_cookie("session", sid, httponly=True, samesite="Lax", path="/")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get("session", ""), None)
        response = web.json_response({"ok": True})
        response.del_cookie("session", path="/")
        return response

    async def verify(self, request: web.Request) -> web.StreamResponse:
        self.calls.append([[k, v] for k, v in request.headers.items()])
        query = request.query
        if sleep := query.get("sleep"):
            await asyncio.sleep(float(sleep))
        if query.get("garbage"):
            assert request.transport is not None
            request.transport.write(b"\x00\xffnot http at all\r\n\r\n" * 100)
            request.transport.close()
            raise asyncio.CancelledError
        if status := query.get("status"):
            return web.Response(status=int(status), text="as asked\n")
        if query.get("huge"):
            return web.Response(status=401, body=b"x" * (1 << 20))
        if query.get("huge_allow"):  # 100 headers of 8000 bytes: 800 KB to forward
            huge = web.Response(status=200, headers={"X-User-Id": "mallory"})
            for n in range(100):
                huge.headers.add("X-User-Roles", f"{n:04d}" + "r" * 7996)
            return huge
        user = self.sessions.get(request.cookies.get("session", ""))
        if user is None:
            return web.Response(status=401, text="please log in at /login\n", headers={
                "WWW-Authenticate": 'Cookie realm="app"', "Location": "/login"})
        headers = {"X-User-Roles": "chat,read"}
        if not query.get("no_identity"):
            headers["X-User-Id"] = user
        if max_age := query.get("max_age"):
            headers["Cache-Control"] = f"max-age={max_age}"
        return web.Response(status=200, headers=headers)

    async def requested(self, _request: web.Request) -> web.Response:
        return web.json_response(self.calls)

    async def reset(self, _request: web.Request) -> web.Response:
        self.calls.clear()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/verify", self.verify)
        app.router.add_get("/_calls", self.requested)
        app.router.add_post("/_reset", self.reset)
        return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    context = None
    if args.tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.tls)
    runner = web.AppRunner(AuthServer().app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
