"""The CRDs in crds/ are what the resource models generate, and are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, Field

from tests.kube.validation import KUBERNETES_VERSIONS
from wsgate_operator.crds import CRDS, render, structural

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_committed_crds_are_generated_from_the_models(name):
    assert (CRD_DIR / name).read_text() == render(name), (
        f"crds/{name} is out of date: run `python -m wsgate_operator.crds`")


def schema_of(name):
    crd = yaml.safe_load((CRD_DIR / name).read_text())
    return crd, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def nodes(node, path):
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_field_is_described_and_structural(name):
    # What `kubectl explain` shows: every field has a description, the top-level
    # apiVersion/kind/metadata/spec/status and every status field included.
    _, schema = schema_of(name)
    described = []
    for path, node in nodes(schema, "<root>"):
        if not path.endswith(("[]", "{}")):  # items and map values: their field says it
            assert node.get("description"), f"{path} has no description"
            described.append(path)
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for forbidden in ("$ref", "anyOf", "oneOf", "title"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("additionalProperties") is not False
        assert "null" not in str(node.get("default"))
        assert node.get("default") not in ([], {}), f"{path}: an empty default says nothing"
    assert {"<root>.apiVersion", "<root>.kind", "<root>.metadata", "<root>.spec",
            "<root>.status", "<root>.status.conditions"} <= set(described)
    if name == "wsroutes.yaml":
        assert {"<root>.status.proxies.synced", "<root>.status.proxies.total"} <= set(described)


@pytest.mark.parametrize("name", sorted(CRDS))
def test_bounds_are_numbers_and_exclusive_flags_booleans(name):
    # OpenAPI v3.0 (what the API server decodes): minimum/maximum are numbers and
    # exclusiveMinimum/exclusiveMaximum booleans; `minimum: true` is refused outright.
    _, schema = schema_of(name)
    for path, node in nodes(schema, "<root>"):
        for bound in ("minimum", "maximum", "multipleOf"):
            if bound in node:
                assert type(node[bound]) in (int, float), f"{path}.{bound}: {node[bound]!r}"
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            if flag in node:
                assert node[flag] is True, f"{path}.{flag}"
                assert flag.removeprefix("exclusive").lower() in node, f"{path}.{flag}"


def test_optional_exclusive_bounds_become_a_number_and_a_flag():
    # An optional field's schema is converted twice (the field, then its one non-null
    # variant merged back): a Python bool is an int, so `True` became the bound.
    limits = schema_of("wsroutes.yaml")[1]["properties"]["spec"]["properties"]["limits"]
    for field in ("idleTimeoutSeconds", "messagesPerSecond"):
        node = limits["properties"][field]
        assert (node["type"], node["minimum"], node["exclusiveMinimum"]) == ("number", 0, True)

    class Model(BaseModel):
        optional: Annotated[float, Field(gt=0, lt=10)] | None = None
        plain: Annotated[int, Field(gt=1)] = 2

    properties = structural(Model)["properties"]
    assert properties["optional"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                                      "maximum": 10, "exclusiveMaximum": True}
    assert properties["plain"] == {"type": "integer", "minimum": 1, "exclusiveMinimum": True,
                                   "default": 2}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(CRDS))
def test_kubernetes_validate_strict_accepts_every_crd(name, version):
    # `kubernetes-validate --strict -k VERSION crds/NAME`, for the oldest and the newest
    # Kubernetes the README supports.
    for crd in yaml.safe_load_all((CRD_DIR / name).read_text()):
        kubernetes_validate.validate(crd, version, strict=True)


def test_names_columns_and_status():
    crd, schema = schema_of("wsroutes.yaml")
    names = crd["spec"]["names"]
    assert (names["shortNames"], names["categories"]) == (["wsr"], ["wsgate"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Hosts", "Path", "Backend", "Endpoints", "Ready", "Age"]
    # The API server shows the first value a column's JSONPath finds; a route without
    # hosts has none (no stored default), so kubectl shows nothing rather than "[]".
    assert columns["Hosts"]["jsonPath"] == ".spec.hosts"
    assert "default" not in schema["properties"]["spec"]["properties"]["hosts"]
    assert all(c.get("description") for c in columns.values())
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
