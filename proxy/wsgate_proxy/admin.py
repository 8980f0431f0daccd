"""The admin API: where the operator pushes configs and probes and Prometheus look.

``PUT /config`` takes a config stream (config_stream.py: a whole config or a delta
from the version the proxy runs, parsed a slice at a time) or, for people and
scripts, one GatewayConfig JSON document. A delta from another version than the
one running is answered 409 with the running version: the sender sends it whole.

Config writes need the bearer token; without a token configured they are refused
outright, so an admin port exposed by mistake cannot be used to rewrite routing.

``GET /config/digests`` lists what the proxy runs item by item (listing.py), for an
operator that does not know its version to send only what differs.

``GET /metrics`` renders on the loop a slice at a time (exposition.py); scrapes that
arrive during a render share it, and at most MAX_SCRAPES are served at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
from pydantic import ValidationError

from . import config_stream, listing
from .config import GatewayConfig
from .config_stream import StreamError
from .exposition import Exposition
from .runtime import ConfigMismatch, Runtime

log = logging.getLogger("wsgate.admin")

# A config with tens of thousands of consumers is several MB of JSON.
MAX_CONFIG_BYTES = 256 * 1024 * 1024
# /readyz lists at most this many of the config source's errors.
MAX_REPORTED_ERRORS = 20
# Scrapes served at once (rendering or sending); more are answered 503. At a thousand
# routes a scrape is 1.6 MB that a slow reader keeps in the proxy's send buffer:
# Prometheus servers scrape one at a time each, a flood must not hold memory.
MAX_SCRAPES = 4
# How long a scraper may take to read the response before its connection is dropped
# (and its place among MAX_SCRAPES freed).
SCRAPE_SEND_SECONDS = 30.0


ApplyConfig = Callable[[GatewayConfig], bool]
# Parses a config stream and swaps it in (runtime.apply_stream).
ApplyStream = Callable[[bytes], Awaitable[bool]]


def admin_app(runtime: Runtime, token: str | None, apply: ApplyConfig,
              apply_stream: ApplyStream) -> web.Application:
    """The admin routes; ``apply`` and ``apply_stream`` swap a config in (and save it)
    and say if it changed."""
    app = web.Application(client_max_size=MAX_CONFIG_BYTES)
    api = AdminApi(runtime, token, apply, apply_stream, Scrapes(runtime, REGISTRY))
    app.router.add_put("/config", api.put_config)
    app.router.add_get("/config", api.get_config)
    app.router.add_get("/config/digests", api.get_digests)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    return app


class AdminApi:
    def __init__(self, runtime: Runtime, token: str | None, apply: ApplyConfig,
                 apply_stream: ApplyStream, scrapes: Scrapes) -> None:
        self.runtime = runtime
        self.scrapes = scrapes
        self.token = token
        self.apply = apply
        self.apply_stream = apply_stream

    def _authorized(self, request: web.Request) -> web.Response | None:
        """None when the request carries the admin token, else the refusal to send."""
        if not self.token:
            return _json(403, {"error": "no admin token is configured on this proxy; "
                                        "start it with --admin-token-file or WSGATE_ADMIN_TOKEN"})
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        valid = hmac.compare_digest(given.encode(), self.token.encode())
        if scheme.lower() != "bearer" or not valid:
            return _json(401, {"error": "missing or wrong bearer token"},
                         {"WWW-Authenticate": 'Bearer realm="wsgate-admin"'})
        return None

    async def put_config(self, request: web.Request) -> web.Response:
        if (refusal := self._authorized(request)) is not None:
            return refusal
        if request.content_type == config_stream.MEDIA_TYPE:
            return await self._put_stream(await request.read())
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as exc:
            return _json(400, {"error": f"the body is not JSON: {exc}"})
        try:
            config = GatewayConfig.model_validate(body)
        except ValidationError as exc:
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            return _json(400, {"error": "invalid config", "errors": errors})
        expected = config.content_hash()
        if not config.version:
            config = config.model_copy(update={"version": expected})
        elif config.version != expected:
            return _json(400, {"error": f"version {config.version!r} is not the content hash of "
                                        f"this config ({expected!r}); omit it or send the hash"})
        changed = self.apply(config)
        return _json(200, {"version": config.version, "changed": changed})

    async def _put_stream(self, body: bytes) -> web.Response:
        try:
            changed = await self.apply_stream(body)
        except StreamError as exc:
            return _json(400, {"error": f"invalid config stream: {exc}"})
        except ConfigMismatch as exc:
            return _json(409, {"error": str(exc), "version": self.runtime.version})
        return _json(200, {"version": self.runtime.version, "changed": changed})

    async def get_config(self, request: web.Request) -> web.Response:
        if self.token and (refusal := self._authorized(request)) is not None:
            return refusal
        return _json(200, self.runtime.summary())

    async def get_digests(self, request: web.Request) -> web.StreamResponse:
        """The version and each item's short digest, rendered and sent a slice at a time
        (a line an item: 50,000 consumers are 2.3 MB)."""
        if (refusal := self._authorized(request)) is not None:
            return refusal
        active = self.runtime.active
        if active is None:
            return _json(503, {"error": "no config loaded yet"})
        # Read as it is: a config's digests change only while it is built, and one that
        # is replaced meanwhile is let go (its dicts emptied) only once nothing holds it,
        # as ``active`` here does (runtime._release). A copy would hold the loop (14 ms at
        # 50,000 consumers).
        response = web.StreamResponse(headers={"Content-Type": listing.MEDIA_TYPE})
        await response.prepare(request)
        try:
            for chunk in listing.render(active.version, active.digests.items()):
                await response.write(chunk)
                await asyncio.sleep(0)  # a write that fits the buffer lets nothing run
            await response.write_eof()
        except ConnectionResetError:  # the reader went away: nothing more to send
            pass
        return response

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        version = self.runtime.version
        # The config source's last refusal: why there is no config, or why the one
        # served is not the latest.
        refused = ({"refused": self.runtime.source_errors[:MAX_REPORTED_ERRORS]}
                   if self.runtime.source_errors else {})
        if self.runtime.draining:
            return _json(503, {"status": "draining", "version": version})
        if version is None:
            return _json(503, {"status": "no config loaded yet", **refused})
        return _json(200, {"status": "ready", "version": version, **refused})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return await self.scrapes.serve(request)


class Scrapes:
    """``GET /metrics``: one render at a time, shared by the scrapes that arrive while
    it runs; at most MAX_SCRAPES served at once (the rest get 503 and Retry-After)."""

    def __init__(self, runtime: Runtime, registry: CollectorRegistry,
                 limit: int = MAX_SCRAPES, send_seconds: float = SCRAPE_SEND_SECONDS) -> None:
        self.runtime = runtime
        self.exposition = Exposition(registry)
        self.limit, self.send_seconds = limit, send_seconds
        self.serving = 0
        self._render: asyncio.Task[bytes] | None = None

    async def serve(self, request: web.Request) -> web.StreamResponse:
        if self.serving >= self.limit:
            return web.Response(status=503, headers={"Retry-After": "1"},
                                text=f"{self.serving} scrapes are being served; retry\n")
        self.serving += 1
        try:
            response = web.Response(body=await self._body(),
                                    headers={"Content-Type": CONTENT_TYPE_LATEST})
            try:
                async with asyncio.timeout(self.send_seconds):
                    await response.prepare(request)
                    await response.write_eof()
            except TimeoutError:
                log.warning("a scraper read /metrics for more than %.0f s: connection "
                            "dropped", self.send_seconds)
                if request.transport is not None:
                    request.transport.abort()
            return response
        finally:
            self.serving -= 1

    async def _body(self) -> bytes:
        if self._render is None or self._render.done():
            self._render = asyncio.create_task(self._rendered())
        # A scraper that goes away does not cancel the render the others wait for.
        return await asyncio.shield(self._render)

    async def _rendered(self) -> bytes:
        await self.runtime.flush_counters()
        return await self.exposition.render()


def _json(status: int, data: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)
