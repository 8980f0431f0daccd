"""The README's reference is generated from the CRDs and the chart's values."""

from __future__ import annotations

import subprocess
import sys

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
