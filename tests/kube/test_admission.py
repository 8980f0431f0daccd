"""The emulator refuses what an API server refuses: CustomResourceDefinitions whose
schema it cannot decode or that are not structural, built-in objects that do not match
the Kubernetes schemas, unknown fields under strict field validation."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import aiohttp
import kmock
import pytest
import yaml

from tests.kube.emulator import ApiServer, create_from_files
from tests.kube.store import ApiError
from tests.kube.validation import KUBERNETES_VERSIONS, crd_findings, kubernetes_findings
from tests.support import ROOT

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
ROUTES = "/apis/wsgate.io/v1alpha1/namespaces/default/wsroutes"
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))


@pytest.fixture
async def bare():
    """An emulator with no CRDs yet, over HTTP."""
    api = ApiServer()
    async with api, kmock.Server(api) as server, aiohttp.ClientSession(
            str(server.url).rstrip("/")) as session:
        session.api, session.url = api, str(server.url).rstrip("/")
        yield session


async def call(http, method, path, body, content_type="application/json", **params):
    async with http.request(method, path, data=json.dumps(body), params=params,
                            headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


def wsroutes() -> dict:
    return yaml.safe_load((ROOT / "crds" / "wsroutes.yaml").read_text())


def root(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec(crd: dict) -> dict:
    return root(crd)["properties"]["spec"]


def test_the_shipped_crds_pass_every_check_the_emulator_makes():
    for path in CRD_FILES:
        crd = yaml.safe_load(path.read_text())
        assert kubernetes_findings(crd) == [], path.name
        assert crd_findings(crd) == [], path.name
    assert KUBERNETES_VERSIONS == ("1.27.0", "1.37.0")


async def test_a_bool_minimum_is_refused_as_the_api_server_cannot_decode_it(bare):
    # Issue 8's defect: `minimum: true` (pydantic's exclusiveMinimum converted twice).
    crd = wsroutes()
    spec(crd)["properties"]["limits"]["properties"]["idleTimeoutSeconds"]["minimum"] = True
    status, answer = await call(bare, "POST", CRDS, crd, fieldValidation="Strict")
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert answer["message"].startswith(
        'CustomResourceDefinition in version "v1" cannot be handled as a '
        "CustomResourceDefinition: cannot unmarshal bool into field spec.versions[0].schema."
        "openAPIV3Schema.properties.spec.properties.limits.properties.idleTimeoutSeconds."
        "minimum of type number")
    # Nothing was created, and the kind it would define is not served.
    assert bare.api.store.objects == {}
    assert not any(k.kind == "WsRoute" for k in bare.api.kinds.values())


async def test_installing_a_broken_crd_file_fails_naming_the_file(bare, tmp_path):
    crd = wsroutes()
    spec(crd)["properties"]["limits"]["properties"]["messagesPerSecond"]["minimum"] = True
    path = tmp_path / "wsroutes.yaml"
    path.write_text(yaml.safe_dump(crd))
    with pytest.raises(ApiError) as info:
        await create_from_files(bare.api, bare.url, path)
    assert info.value.status == 400
    assert info.value.message.startswith("wsroutes.yaml: CustomResourceDefinition in version")
    assert "messagesPerSecond.minimum of type number" in info.value.message


def _set(path: list, key: str, value) -> Callable[[dict], None]:
    def change(crd: dict) -> None:
        node = root(crd)
        for step in path:
            node = node[step]
        node[key] = value
    return change


def _drop(path: list, key: str) -> Callable[[dict], None]:
    def change(crd: dict) -> None:
        node = root(crd)
        for step in path:
            node = node[step]
        del node[key]
    return change


def _column_type(crd: dict) -> None:
    crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["type"] = "text"


SPEC = ["properties", "spec", "properties"]
P = "spec.versions[0].schema.openAPIV3Schema"
STRUCTURAL = {
    "type missing": (_drop([*SPEC, "limits"], "type"),
                     f"{P}.properties[spec].properties[limits].type",
                     "Required value: must not be empty for specified object fields"),
    "items type missing": (_drop([*SPEC, "hosts", "items"], "type"),
                           f"{P}.properties[spec].properties[hosts].items.type",
                           "Required value: must not be empty for specified array items"),
    "unknown type": (_set([*SPEC, "limits"], "type", "map"),
                     f"{P}.properties[spec].properties[limits].type", "Unsupported value"),
    "$ref": (_set([*SPEC, "tls"], "$ref", "#/definitions/Tls"),
             f"{P}.properties[spec].properties[tls].$ref", "$ref is not supported"),
    "properties and additionalProperties": (
        _set([*SPEC, "limits"], "additionalProperties", {"type": "string"}),
        f"{P}.properties[spec].properties[limits].additionalProperties",
        "additionalProperties and properties are mutual exclusive"),
    "uniqueItems": (_set([*SPEC, "hosts"], "uniqueItems", True),
                    f"{P}.properties[spec].properties[hosts].uniqueItems",
                    "runtime complexity becomes quadratic"),
    "type inside anyOf": (_set([*SPEC, "hosts"], "anyOf", [{"type": "array"}]),
                          f"{P}.properties[spec].properties[hosts].anyOf[0].type",
                          "must be empty to be structural"),
    "default of the wrong type": (
        _set([*SPEC, "backend", "properties", "retries"], "default", "one"),
        f"{P}.properties[spec].properties[backend].properties[retries].default",
        "'one' is not of type 'integer'"),
    "default with an unknown field": (
        _set([*SPEC, "auth", "properties", "keyAuth", "default"], "form", "x"),
        f"{P}.properties[spec].properties[auth].properties[keyAuth].default.form",
        "must not have unknown fields"),
    "list-map key not in the items": (
        _set(["properties", "status", "properties", "conditions"],
             "x-kubernetes-list-map-keys", ["name"]),
        f"{P}.properties[status].properties[conditions].items.properties[name]",
        "must be specified"),
    "CEL rule that does not compile": (
        _set([*SPEC, "backend", "properties", "loadBalancing"], "x-kubernetes-validations",
             [{"rule": "self.algorithm ==", "message": "m"}]),
        f"{P}.properties[spec].properties[backend].properties[loadBalancing]"
        ".x-kubernetes-validations[0].rule", "compilation failed"),
    "metadata restricted beyond names": (
        _set(["properties", "metadata"], "properties", {"labels": {"type": "object"}}),
        f"{P}.properties[metadata]", "must not specify anything other than name"),
    "root not an object": (_set([], "type", "array"), f"{P}.type",
                           "must be object at the root"),
    "printer column type": (_column_type, "spec.versions[0].additionalPrinterColumns[0].type",
                            "Unsupported value"),
}


@pytest.mark.parametrize("case", sorted(STRUCTURAL))
async def test_a_schema_that_is_not_structural_gets_422_naming_the_field(bare, case):
    change, field, words = STRUCTURAL[case]
    crd = wsroutes()
    change(crd)
    status, answer = await call(bare, "POST", CRDS, crd, fieldValidation="Strict")
    assert (status, answer["reason"]) == (422, "Invalid"), answer
    assert answer["message"].startswith(
        'CustomResourceDefinition "wsroutes.wsgate.io" is invalid: ')
    assert any(c["field"] == field and words in c["message"]
               for c in answer["details"]["causes"]), answer["details"]["causes"]


async def test_crd_updates_are_admitted_like_creates(bare):
    await create_from_files(bare.api, bare.url, *CRD_FILES)
    url = f"{CRDS}/wsroutes.wsgate.io"
    merge = "application/merge-patch+json"
    broken = copy.deepcopy(wsroutes()["spec"])
    broken["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "limits"].pop("type")
    status, answer = await call(bare, "PATCH", url, {"spec": broken}, merge)
    assert status == 422, answer
    # The stored CRD is unchanged and its kind still admits routes by its schema.
    route = {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "r"},
             "spec": {"paths": [{"value": "/"}], "backend": {"service": {"name": "s",
                                                                          "port": 80}},
                      "auth": {"mode": "None"}, "limits": {"idleTimeoutSeconds": 0}}}
    status, answer = await call(bare, "POST", ROUTES, route)
    assert status == 422
    assert "spec.limits.idleTimeoutSeconds" in answer["message"]
    # A valid change is taken, and served at once.
    status, answer = await call(bare, "PATCH", url,
                                {"spec": {"names": {"shortNames": ["wsr", "route"]}}}, merge)
    assert status == 200, answer
    assert answer["spec"]["names"]["shortNames"] == ["wsr", "route"]


async def test_builtin_objects_are_checked_against_the_kubernetes_schemas(bare):
    pods = "/api/v1/namespaces/default/pods"
    status, answer = await call(bare, "POST", pods, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": "proxy"}})
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert "cannot unmarshal string into field spec.containers of type array" in \
        answer["message"]

    status, answer = await call(bare, "POST", "/apis/apps/v1/namespaces/default/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    assert (status, answer["reason"]) == (422, "Invalid")
    assert {"reason": "FieldValueInvalid", "field": "spec.selector",
            "message": "Required value"} in answer["details"]["causes"]


async def test_unknown_fields_are_refused_when_strict_and_dropped_otherwise(bare):
    await create_from_files(bare.api, bare.url, *CRD_FILES)
    secrets = "/api/v1/namespaces/default/secrets"
    typo = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringdata": {"key": "v"}}
    status, answer = await call(bare, "POST", secrets, typo, fieldValidation="Strict")
    assert status == 400
    assert answer["message"] == ('Secret in version "v1" cannot be handled as a Secret: '
                                 'strict decoding error: unknown field "stringdata"')
    status, answer = await call(bare, "POST", secrets, typo)
    assert status == 201
    assert "stringdata" not in answer

    route = {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "r"},
             "spec": {"paths": [{"value": "/"}], "backend": {"service": {"name": "s",
                                                                          "port": 80}},
                      "auth": {"mode": "None"}, "limit": {"maxConnections": 1}}}
    status, answer = await call(bare, "POST", ROUTES, route, fieldValidation="Strict")
    assert status == 400
    assert answer["message"].endswith('strict decoding error: unknown field "spec.limit"')
    status, answer = await call(bare, "POST", ROUTES, route)
    assert status == 201
    assert "limit" not in answer["spec"]
