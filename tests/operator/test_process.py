"""`wsgate operator` as users run it: a process, its probe and metrics, its namespaces."""

from __future__ import annotations

import os
import socket

import aiohttp

from tests.kube.operator import OperatorThread
from tests.operator.conftest import PROXY_LABELS, PROXY_NAMESPACE
from tests.support import TOKEN, eventually, objects_for
from wsgate.processes import WsgateProcess

CR = "wsgate.io/v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_operator_command_serves_probe_and_metrics(api, proxies, admin_port, tmp_path,
                                                            apply, upstream):
    proxies.start("proxy-a", 0)
    apply(*objects_for(upstream.port))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    health, metrics = free_port(), free_port()
    selector = ",".join(f"{k}={v}" for k, v in PROXY_LABELS.items())
    operator = WsgateProcess(
        "operator", "--proxy-selector", selector, "--proxy-namespace", PROXY_NAMESPACE,
        "--proxy-admin-port", str(admin_port), "--admin-token-file", str(token_file),
        "--health-listen", f"127.0.0.1:{health}", "--metrics-listen", f"127.0.0.1:{metrics}",
        env={"KUBECONFIG": os.environ["KUBECONFIG"]}, name="operator")
    try:
        operator.start_without_waiting()

        async def programmed():
            route = api.get(CR, "WsRoute", "echo")
            ready = {c["type"]: c["status"] for c in route["status"]["conditions"]}
            assert ready["Programmed"] == "True"

        await eventually(programmed, timeout=20)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{health}/healthz") as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{metrics}/metrics") as response:
                text = await response.text()
        assert 'wsgate_operator_pushes_total{outcome="ok"} 1.0' in text
        assert "wsgate_operator_compile_seconds_count" in text
        assert 'wsgate_operator_objects{kind="WsRoute"} 1.0' in text
        assert TOKEN not in operator.output()
    finally:
        stopped = operator.stop()
        print(operator.output())
        assert stopped == 0


async def test_namespaces_limit_what_the_operator_sees(api, proxies, operator_options, apply,
                                                       upstream):
    proxies.start("proxy-a", 0)
    team_a = objects_for(upstream.port)
    team_b = objects_for(upstream.port)
    for obj in team_a:
        obj["metadata"]["namespace"] = "team-a"
    for obj in team_b:
        obj["metadata"]["namespace"] = "team-b"
    apply(*team_a, *team_b)
    operator_options.namespaces = ["team-a"]
    async with OperatorThread(operator_options):
        async def only_team_a():
            route = api.get(CR, "WsRoute", "echo", namespace="team-a")
            assert {c["type"]: c["status"] for c in route["status"]["conditions"]}[
                "Programmed"] == "True"

        await eventually(only_team_a, timeout=15)
        assert "status" not in api.get(CR, "WsRoute", "echo", namespace="team-b")
