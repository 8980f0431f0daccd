"""The CRDs in crds/ are what the resource models generate, and are structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsgate_operator.crds import CRDS, render

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_committed_crds_are_generated_from_the_models(name):
    assert (CRD_DIR / name).read_text() == render(name), (
        f"crds/{name} is out of date: run `python -m wsgate_operator.crds`")


def schema_of(name):
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    return crd, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(node, path="spec"):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_field_is_described_and_structural(name):
    _, schema = schema_of(name)
    for path, node in nodes(schema["properties"]["spec"]):
        if path != "spec" and not path.endswith("[]"):  # items: their array says it
            assert "description" in node, f"{path} has no description"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "title"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("additionalProperties") is not False
        assert "null" not in str(node.get("default"))


def test_names_columns_and_status():
    crd, schema = schema_of("wsroutes.yaml")
    names = crd["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["wsr"], ["wsgate"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Hosts", "Paths", "Backend", "Endpoints", "Ready", "Age"]
    assert {"observedGeneration", "conditions", "endpoints", "proxies"} <= set(
        schema["properties"]["status"]["properties"])
    crd, _ = schema_of("wsconsumers.yaml")
    assert crd["spec"]["names"]["shortNames"] == ["wsc"]
    assert [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]] == [
        "Username", "Credentials", "Ready", "Age"]


def test_cel_rules_where_fields_depend_on_each_other():
    _, schema = schema_of("wsroutes.yaml")
    spec = schema["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("has(self.tls)" in r for r in rules)
    lb = spec["properties"]["backend"]["properties"]["loadBalancing"]
    assert len(lb["x-kubernetes-validations"]) == 3
    assert spec["properties"]["paths"]["minItems"] == 1
    port = spec["properties"]["backend"]["properties"]["service"]["properties"]["port"]
    assert port["x-kubernetes-int-or-string"] is True
    timeout = spec["properties"]["backend"]["properties"]["connectTimeoutSeconds"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)
