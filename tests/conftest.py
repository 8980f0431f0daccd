from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.peers import AuthServerProcess, OidcProvider
from tests.redis_server import RedisServer
from tests.support import (
    TOKEN,
    Admin,
    RecordingUpstream,
    compile_objects,
    objects_for,
    route_of,
)
from wsgate.processes import WsgateProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The adversarial tier loads the proxy on purpose and bounds what a bystander waits:
    # it runs alone (`make test` runs the serial tests after the parallel part).
    for item in items:
        if "adversarial" in item.path.parts:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="module")
def echo_a() -> Iterator[WsgateProcess]:
    with WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "a", name="echo a") as proc:
        yield proc


@pytest.fixture(scope="module")
def echo_b() -> Iterator[WsgateProcess]:
    with WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "b", name="echo b") as proc:
        yield proc


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., WsgateProcess]]:
    """Start proxies on free ports (admin token set); all are stopped after the test."""
    started: list[WsgateProcess] = []

    def start(*args: str, token: str | None = TOKEN) -> WsgateProcess:
        env = {"WSGATE_ADMIN_TOKEN": token} if token else {"WSGATE_ADMIN_TOKEN": ""}
        if "--drain-seconds" not in args:
            args = (*args, "--drain-seconds", "0")
        proc = WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen",
                             "127.0.0.1:0", *args, env=env, name="proxy")
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        print(f"--- {proc.name} log ---\n{proc.output()}")  # shown when the test failed


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1, empty, stopped after the test (pass or fail)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as server:
        yield server


@dataclass
class Served:
    """A proxy serving a set of objects, and the objects (change them, then push())."""

    proxy: WsgateProcess
    admin: Admin
    objects: list[dict[str, Any]]

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}"

    @property
    def url(self) -> str:
        return self.base + "/.ws"

    def find(self, kind: str, name: str) -> dict[str, Any]:
        return next(o for o in self.objects
                    if o["kind"] == kind and o["metadata"]["name"] == name)

    async def push(self) -> None:
        status, body = await self.admin.put_config(compile_objects(self.objects))
        assert status == 200, body


@pytest.fixture
def serve(start_proxy, upstream) -> Callable[..., Awaitable[Served]]:
    """A proxy serving the quickstart route onto the recording upstream; keyword
    arguments update the route's spec, positional ones are extra objects."""
    async def start(*extra: dict[str, Any], objects: list[dict[str, Any]] | None = None,
                    proxy_args: tuple[str, ...] = (), **spec: Any) -> Served:
        objects = [*(objects or objects_for(upstream.port)), *copy.deepcopy(extra)]
        route_of(objects)["spec"].update(spec)
        proxy = start_proxy(*proxy_args)
        served = Served(proxy, Admin(proxy.admin_port), objects)
        await served.push()
        return served
    return start


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServerProcess]:
    """The forward-auth server (a process of its own), for the module's tests."""
    server = AuthServerProcess().start()
    yield server
    server.stop()


@pytest.fixture
def oidc() -> Iterator[OidcProvider]:
    """An OpenID Connect provider (oidc-provider-mock), stopped after the test."""
    provider = OidcProvider().start()
    yield provider
    provider.stop()
