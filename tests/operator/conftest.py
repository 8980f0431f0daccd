"""The operator tier: the real kopf operator, the API emulator over HTTP, real proxies."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import kmock
import pytest

from tests.kube.emulator import ApiServer, create_from_files
from tests.kube.operator import OperatorThread, write_kubeconfig
from tests.support import ROOT, TOKEN
from wsgate.processes import WsgateProcess
from wsgate_operator.options import OperatorOptions

PROXY_NAMESPACE = "wsgate-system"
PROXY_LABELS = {"app.kubernetes.io/name": "wsgate-proxy"}


@pytest.fixture
async def api(tmp_path, monkeypatch) -> AsyncIterator[ApiServer]:
    server = ApiServer()
    async with server, kmock.Server(server) as http:
        url = str(http.url).rstrip("/")
        # crds/ installed from the files, as a user applies them: an invalid CRD fails here.
        await create_from_files(server, url, *sorted((ROOT / "crds").glob("*.yaml")))
        server.requests.clear()  # from here on, what the code under test asks for
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


def shared_admin_port(addresses: list[str]) -> int:
    """A port free on every one of these loopback addresses."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no common free port on the loopback addresses")


PROXY_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 8)]


@pytest.fixture(scope="session")
def admin_port() -> int:
    return shared_admin_port(PROXY_ADDRESSES)


class ProxyPods:
    """Real proxy processes, each with a Pod object in the emulator as Kubernetes has it."""

    def __init__(self, api: ApiServer, admin_port: int) -> None:
        self.api = api
        self.admin_port = admin_port
        self.processes: dict[str, WsgateProcess] = {}

    def start(self, name: str, index: int, *args: str, pod: bool = True,
              token: str = TOKEN) -> WsgateProcess:
        """A proxy on 127.0.0.<index + 2>; another ``token`` than the operator's makes it
        refuse every push."""
        address = PROXY_ADDRESSES[index]
        process = WsgateProcess(
            "proxy", "--listen", "127.0.0.1:0", "--admin-listen",
            f"{address}:{self.admin_port}", "--drain-seconds", "0", *args,
            env={"WSGATE_ADMIN_TOKEN": token}, name=name).start()
        self.processes[name] = process
        if pod:
            self.api.apply(self.pod(name, address))
        return process

    def pod(self, name: str, address: str, restarts: int = 0) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": PROXY_NAMESPACE, "labels": PROXY_LABELS},
                "spec": {"containers": [{"name": "proxy", "image": "wsgate:dev"}]},
                "status": {"phase": "Running", "podIP": address,
                           "containerStatuses": [{
                               "name": "proxy", "image": "wsgate:dev", "imageID": "",
                               "ready": True, "restartCount": restarts}]}}

    def url(self, name: str, path: str = "/.ws") -> str:
        return f"ws://127.0.0.1:{self.processes[name].port}{path}"

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop()
            print(f"--- {process.name} log ---\n{process.output()}")


@pytest.fixture
def proxies(api, admin_port) -> Iterator[ProxyPods]:
    pods = ProxyPods(api, admin_port)
    yield pods
    pods.stop_all()


@pytest.fixture
def operator_options(admin_port) -> OperatorOptions:
    return OperatorOptions(proxy_selector=dict(PROXY_LABELS), proxy_namespace=PROXY_NAMESPACE,
                           proxy_admin_port=admin_port, admin_token=TOKEN,
                           holdoff=0.05, max_holdoff=0.3, verify_every=0.5)


@pytest.fixture
async def operator(api, operator_options) -> AsyncIterator[OperatorThread]:
    async with OperatorThread(operator_options) as running:
        yield running


@pytest.fixture
def apply(api) -> Callable[..., None]:
    def apply_all(*objects: dict[str, Any]) -> None:
        for obj in objects:
            api.apply(obj)
    return apply_all
