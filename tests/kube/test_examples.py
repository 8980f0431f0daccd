"""The manifests users apply (examples/kind/, examples/quickstart/, examples/browser-apps/)
are what an API server accepts: the Kubernetes schemas (kubernetes-validate, strict) for
the oldest and newest supported version, and the CRDs' schemas through the emulator's
admission, with strict field validation as `kubectl apply` asks for it."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.kube.emulator import ApiServer
from tests.kube.validation import KUBERNETES_VERSIONS
from tests.support import ROOT

EXAMPLES = sorted([*(ROOT / "examples" / "kind").glob("*.yaml"),
                   *(ROOT / "examples" / "browser-apps").glob("*.yaml"),
                   *(ROOT / "examples" / "quickstart").glob("*.yaml")])


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_are_examples_of_every_kind_users_apply():
    kinds = {d["kind"] for path in EXAMPLES for d in documents(path)}
    assert {"WsRoute", "WsConsumer", "Secret", "Service", "Deployment",
            "EndpointSlice"} <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_is_admitted_as_an_api_server_would(path):
    api = ApiServer()
    api.add_crds()
    for doc in documents(path):
        if not doc["apiVersion"].startswith("wsgate.io/"):
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)
        # The CRDs' schemas (defaults, CEL rules) and the Kubernetes schemas again, as
        # the API server admits a create; strict: an unknown field is an error, not pruned.
        kind = api.kind(doc["apiVersion"], doc["kind"])
        api.store.create(kind, doc["metadata"].get("namespace", "default"), doc, "Strict")


def test_the_kind_backend_is_ready_only_when_it_listens():
    (deployment,) = [d for d in documents(ROOT / "examples" / "kind" / "echo.yaml")
                     if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "ws"}
    assert {"name": "ws", "containerPort": 8080} in container["ports"]
