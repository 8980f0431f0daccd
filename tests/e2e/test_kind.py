"""The scenarios of tests/scenarios.py on a real kind cluster (`make e2e` sets it up):
the same ones the operator tier runs on the API emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from tests import scenarios
from tests.support import consumer_objects

# What `make e2e` needs (tests/e2e/setup.sh checks the same, and stops naming them).
TOOLS = ("kind", "docker", "kubectl", "helm")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"kind e2e needs {', '.join(MISSING)} on PATH "
                                             "(`make e2e` stops naming them)"),
    pytest.mark.skipif(not MISSING and os.environ.get("WSGATE_E2E") != "1",
                       reason="kind e2e runs through `make e2e` (which sets up the cluster)"),
]

NAMESPACE = "wsgate-system"


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def resource(api_version: str, kind: str) -> str:
    group = api_version.rpartition("/")[0]
    return f"{kind.lower()}.{group}" if group else kind.lower()


class KindCluster:
    def url(self, path: str = "/.ws") -> str:
        return f"ws://127.0.0.1:{os.environ.get('WSGATE_E2E_PORT', '9080')}{path}"

    def get(self, api_version: str, kind: str, name: str) -> dict[str, Any]:
        return json.loads(kubectl("get", resource(api_version, kind), name, "-o", "json"))

    def apply(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            for field in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
                obj.get("metadata", {}).pop(field, None)
            kubectl("apply", "-f", "-", stdin=json.dumps(obj))

    def delete(self, api_version: str, kind: str, name: str) -> None:
        kubectl("delete", resource(api_version, kind), name)

    async def scale_backend(self, replicas: int) -> None:
        kubectl("scale", "deployment/echo", f"--replicas={replicas}")
        kubectl("rollout", "status", "deployment/echo", "--timeout=120s")

    async def replace_proxies(self) -> None:
        kubectl("-n", NAMESPACE, "rollout", "restart", "deployment/wsgate-proxy")


@pytest.fixture
def cluster():
    kind = KindCluster()
    kind.apply(*consumer_objects("jane", "jane-key"))
    yield kind
    kubectl("apply", "-f", "examples/kind/")  # the quickstart as it was, for the next one


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS)
async def test_scenario(cluster, scenario):
    # A real cluster's watch and rollout delays: revocations get a few seconds.
    await scenarios.run(scenario, cluster, revocation_within=5.0)
