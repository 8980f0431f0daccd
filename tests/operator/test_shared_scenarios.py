"""The scenarios of tests/scenarios.py on the API emulator with local proxy processes:
the same ones tests/e2e/ runs on kind."""

from __future__ import annotations

from typing import Any

import pytest

from tests import scenarios
from tests.operator.conftest import ProxyPods
from tests.support import consumer_objects, objects_for
from wsgate.processes import WsgateProcess

# Serial: asserts a change is enforced within a second of its write (tests/scenarios.py).
pytestmark = pytest.mark.serial


class EmulatorCluster:
    """The quickstart on the emulator: two proxy processes (as Pods), echo upstreams as
    the backend's endpoints."""

    def __init__(self, api: Any, proxies: ProxyPods) -> None:
        self.api = api
        self.proxies = proxies
        self.echoes: list[WsgateProcess] = []
        self.names = {"proxy-a": 0, "proxy-b": 1}
        self._generation = 0

    def start(self) -> None:
        for name, index in self.names.items():
            self.proxies.start(name, index)

    def url(self, path: str = "/.ws") -> str:
        return self.proxies.url(next(iter(self.names)), path)

    def get(self, api_version: str, kind: str, name: str) -> dict[str, Any]:
        return self.api.get(api_version, kind, name)

    def apply(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            self.api.apply(obj)

    def delete(self, api_version: str, kind: str, name: str) -> None:
        self.api.delete(api_version, kind, name)

    async def scale_backend(self, replicas: int) -> None:
        while len(self.echoes) < replicas:
            self.echoes.append(WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id",
                                             f"echo-{len(self.echoes)}").start())
        while len(self.echoes) > replicas:
            gone = self.echoes.pop()
            self.api.delete("discovery.k8s.io/v1", "EndpointSlice", f"s{gone.port}")
            gone.stop()
        self.apply(*objects_for(*(e.port for e in self.echoes)))

    async def replace_proxies(self) -> None:
        """A rolling update: each proxy pod in turn replaced by a new one."""
        self._generation += 1
        for name, index in list(self.names.items()):
            self.proxies.processes[name].stop()
            self.api.delete("v1", "Pod", name, namespace="wsgate-system")
            del self.names[name]
            new = f"{name.rsplit('-', 1)[0]}-{'ab'[index]}{self._generation}"
            self.proxies.start(new, index)
            self.names[new] = index

    def stop(self) -> None:
        for echo in self.echoes:
            echo.stop()


@pytest.fixture
async def cluster(api, proxies, operator):
    emulated = EmulatorCluster(api, proxies)
    emulated.start()
    await emulated.scale_backend(2)
    emulated.apply(*consumer_objects("jane", "jane-key"))
    yield emulated
    emulated.stop()


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS)
async def test_scenario(cluster, scenario):
    await scenarios.run(scenario, cluster, revocation_within=1.0)
