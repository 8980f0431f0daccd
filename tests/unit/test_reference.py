"""The README's reference is generated from the CRDs and the chart's values."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.kube.validation import KUBERNETES_VERSIONS
from tests.support import ROOT


def test_readme_reference_is_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "reference.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout


def test_reference_covers_every_field_and_value():
    text = (ROOT / "README.md").read_text()
    for field in ("spec.backend.loadBalancing.hashOn", "spec.auth.keyAuth.subprotocol",
                  "spec.limits.messagesPerSecond", "spec.credentials[].secretRef.name"):
        assert f"`{field}`" in text
    for value in ("proxy.drainSeconds", "service.nodePort", "operator.watchNamespaces",
                  "networkPolicy.adminFrom"):
        assert f"`{value}`" in text
    values = text.split("### Chart values")[1].split("<!-- reference:end -->")[0]
    rows = [line for line in values.splitlines() if line.startswith("| `")]
    assert rows
    assert all(line.rstrip(" |").split("|")[-1].strip() for line in rows), (
        "every chart value has a comment in values.yaml")


def test_readme_chart_and_tests_agree_on_the_supported_kubernetes_versions():
    oldest, newest = (v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
    assert f"wsgate supports Kubernetes {oldest} to {newest}" in (ROOT / "README.md").read_text()
    chart = yaml.safe_load((ROOT / "helm" / "wsgate" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={KUBERNETES_VERSIONS[0]}-0"
