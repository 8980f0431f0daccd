"""The emulator answers as the API server does on what the operator tier relies on."""

from __future__ import annotations

import json

import aiohttp
import kmock
import pytest

from tests.kube.emulator import ApiServer, create_from_files
from tests.kube.store import EVENT_LOG_SIZE, WatchEvent
from tests.support import ROOT, objects_for, route_of

CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))
ROUTES = "/apis/wsgate.io/v1alpha1/namespaces/default/wsroutes"
SECRETS = "/api/v1/namespaces/default/secrets"


@pytest.fixture
async def http():
    api = ApiServer()
    async with api, kmock.Server(api) as server, aiohttp.ClientSession(
            str(server.url).rstrip("/")) as session:
        await create_from_files(api, str(server.url).rstrip("/"), *CRD_FILES)
        session.api = api
        yield session


async def call(http, method, path, body=None, content_type="application/json", **params):
    data = None if body is None else json.dumps(body)
    async with http.request(method, path, data=data, params=params,
                            headers={"Content-Type": content_type}) as response:
        return response.status, await response.json()


def route(name="r", **spec):
    obj = route_of(objects_for(1))
    obj["metadata"] = {"name": name}
    obj["spec"].update(spec)
    return obj


async def test_create_sets_identity_and_versions_and_answers_201(http):
    status, made = await call(http, "POST", ROUTES, route())
    assert status == 201
    meta = made["metadata"]
    assert {"uid", "resourceVersion", "creationTimestamp"} <= set(meta)
    assert meta["generation"] == 1
    status, _ = await call(http, "POST", ROUTES, route())
    assert status == 409
    status, event = await call(http, "POST", "/api/v1/namespaces/default/events",
                               {"metadata": {"generateName": "r."}, "reason": "X",
                                "involvedObject": {"kind": "WsRoute", "name": "r"}})
    assert status == 201
    assert event["metadata"]["name"].startswith("r.")


async def test_schema_defaults_pruning_and_field_errors(http):
    status, made = await call(http, "POST", ROUTES, route(unknown=1))
    assert status == 201
    assert "unknown" not in made["spec"]
    assert made["spec"]["backend"]["retries"] == 1  # a default from the CRD
    assert made["spec"]["paths"][0]["type"] == "Prefix"
    status, error = await call(http, "POST", ROUTES, route("bad", paths=[]))
    assert (status, error["reason"]) == (422, "Invalid")
    assert error["details"]["causes"][0]["field"] == "spec.paths"


async def test_cel_rules_are_evaluated_after_defaulting(http):
    spec = {"backend": {"service": {"name": "s", "port": 80},
                        "loadBalancing": {"algorithm": "ConsistentHash", "hashOn": "Header"}}}
    status, error = await call(http, "POST", ROUTES, route(**spec))
    assert status == 422
    assert error["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.backend.loadBalancing",
        "message": "hashOn: Header needs header: the name of the header to hash"}]
    spec["backend"]["loadBalancing"]["header"] = "x-room"
    assert (await call(http, "POST", ROUTES, route(**spec)))[0] == 201


async def test_versions_conflicts_and_no_op_patches(http):
    _, made = await call(http, "POST", ROUTES, route())
    version = made["metadata"]["resourceVersion"]
    merge = "application/merge-patch+json"
    status, same = await call(http, "PATCH", f"{ROUTES}/r",
                              {"spec": {"onCredentialRevoked": "Close"}}, merge)  # the default
    assert (status, same["metadata"]["resourceVersion"]) == (200, version)  # nothing changed
    _, changed = await call(http, "PATCH", f"{ROUTES}/r", {"spec": {"hosts": ["a.test"]}}, merge)
    assert int(changed["metadata"]["resourceVersion"]) > int(version)
    assert changed["metadata"]["generation"] == 2
    status, _ = await call(http, "PATCH", f"{ROUTES}/r",
                           {"metadata": {"resourceVersion": version}, "spec": {"hosts": []}},
                           merge)
    assert status == 409
    status, _ = await call(http, "PATCH", f"{ROUTES}/r",
                               [{"op": "test", "path": "/metadata/resourceVersion",
                                 "value": version}], "application/json-patch+json")
    assert status == 422


async def test_status_subresource_is_kept_apart(http):
    await call(http, "POST", ROUTES, {**route(), "status": {"endpoints": 9}})
    merge = "application/merge-patch+json"
    _, obj = await call(http, "PATCH", f"{ROUTES}/r/status", {"status": {"endpoints": 2},
                                                              "spec": {"hosts": ["x.test"]}},
                        merge)
    assert obj["status"] == {"endpoints": 2}
    assert "hosts" not in obj["spec"]
    assert obj["metadata"]["generation"] == 1  # a status write is not a new generation
    _, obj = await call(http, "PATCH", f"{ROUTES}/r", {"status": {"endpoints": 5}}, merge)
    assert obj["status"] == {"endpoints": 2}


async def watch(http, path, **params):
    events = []
    async with http.get(path, params={"watch": "true", "timeoutSeconds": "1", **params}) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        async for line in r.content:
            if line.strip():
                events.append(json.loads(line))
    return events


async def test_watch_resumes_after_a_version_and_expires_old_ones(http):
    _, first = await call(http, "POST", ROUTES, route("a"))
    await call(http, "POST", ROUTES, route("b"))
    events = await watch(http, ROUTES, resourceVersion=first["metadata"]["resourceVersion"])
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    everything = await watch(http, ROUTES)  # no version: the current state, then changes
    assert {e["object"]["metadata"]["name"] for e in everything} == {"a", "b"}
    initial = await watch(http, ROUTES, sendInitialEvents="true",
                          resourceVersionMatch="NotOlderThan")
    assert initial[-1]["type"] == "BOOKMARK"
    assert initial[-1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}
    # A version older than the event log holds: 410 Gone, as after compaction.
    store = http.api.store
    assert store.log.maxlen == EVENT_LOG_SIZE
    oldest = store.log[0]
    store.log.clear()
    store.revision += 10  # ten changes the log no longer holds
    store.log.append(WatchEvent(store.revision, oldest.kind, "MODIFIED", oldest.object))
    expired = await watch(http, ROUTES, resourceVersion=first["metadata"]["resourceVersion"])
    assert expired[0]["type"] == "ERROR"
    assert expired[0]["object"]["code"] == 410


async def test_selectors_on_list_and_watch(http):
    for name, tier in (("a", "gold"), ("b", "free")):
        await call(http, "POST", SECRETS, {"metadata": {"name": name, "labels": {"tier": tier}},
                                           "stringData": {"k": "v"}})
    _, listed = await call(http, "GET", SECRETS, labelSelector="tier=gold")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    _, listed = await call(http, "GET", SECRETS, labelSelector="tier in (gold,free),tier!=free")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
    _, listed = await call(http, "GET", SECRETS, fieldSelector="metadata.name=b")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["b"]
    events = await watch(http, SECRETS, labelSelector="tier=free")
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]
    assert listed["items"][0]["data"] == {"k": "dg=="}  # stringData folded into data
    assert "stringData" not in listed["items"][0]


async def test_strategic_merge_patch_directives_and_replace(http):
    await call(http, "POST", SECRETS, {"metadata": {"name": "s", "labels": {"a": "1", "b": "2"}}})
    _, patched = await call(http, "PATCH", f"{SECRETS}/s",
                            {"$setElementOrder/x": [], "metadata": {"labels": {"b": None}}},
                            "application/strategic-merge-patch+json")
    assert patched["metadata"]["labels"] == {"a": "1"}
    assert not any(k.startswith("$") for k in patched)
    status, replaced = await call(http, "PUT", f"{SECRETS}/s",
                                  {"metadata": {"name": "s", "labels": {"c": "3"}}})
    assert (status, replaced["metadata"]["labels"]) == (200, {"c": "3"})


async def test_finalizers_hold_deletion(http):
    await call(http, "POST", SECRETS, {"metadata": {"name": "f", "finalizers": ["x/y"]}})
    _, deleting = await call(http, "DELETE", f"{SECRETS}/f")
    assert deleting["metadata"]["deletionTimestamp"]
    assert (await call(http, "GET", f"{SECRETS}/f"))[0] == 200
    await call(http, "PATCH", f"{SECRETS}/f", {"metadata": {"finalizers": []}},
               "application/merge-patch+json")
    assert (await call(http, "GET", f"{SECRETS}/f"))[0] == 404


async def test_namespaces_core_discovery_and_tables(http):
    status, namespaces = await call(http, "GET", "/api/v1/namespaces")
    assert status == 200
    assert "default" in [n["metadata"]["name"] for n in namespaces["items"]]
    assert (await call(http, "GET", "/api/v1/namespaces/default"))[1]["kind"] == "Namespace"
    _, core = await call(http, "GET", "/api/v1")
    assert core["groupVersion"] == "v1"
    await call(http, "POST", ROUTES, route())
    await call(http, "POST", ROUTES, route("two", hosts=["a.test", "b.test"],
                                           paths=[{"value": "/a"}, {"value": "/b"}]))
    async with http.get(ROUTES, headers={"Accept": "application/json;as=Table;v=v1;"
                                                   "g=meta.k8s.io"}) as response:
        tab = await response.json()
    assert [c["name"] for c in tab["columnDefinitions"]] == [
        "Name", "Hosts", "Path", "Backend", "Endpoints", "Ready", "Age"]
    # As the API server computes cells: the first value a JSONPath finds, a list as JSON,
    # nothing found as null (kubectl shows <none>).
    cells = {row["cells"][0]: row["cells"][1:5] for row in tab["rows"]}
    assert cells == {"r": [None, "/.ws", "echo", None],
                     "two": ['["a.test","b.test"]', "/a", "echo", None]}


def test_the_kmock_internals_the_emulator_builds_on():
    # tests/kube/emulator.py subclasses these; a kmock upgrade that moves them breaks here.
    from kmock._internal import rendering

    assert hasattr(kmock.KubernetesScaffold, "_serve_version")
    assert hasattr(kmock.KubernetesScaffold, "_handle")
    assert {"resource", "namespace", "name", "subresource", "_raw_request"} <= {
        f.name for f in rendering.Request.__attrs_attrs__}


async def test_the_api_refuses_auth_settings_that_cannot_work(http):
    """The CEL rules of External and the identity providers, as the API server runs them."""
    def auth(**fields):
        return {"auth": fields}
    cases = [
        (auth(methods=["External"]), "spec.auth",
         "method External needs external: the auth endpoint's url"),
        (auth(methods=["KeyAuth"], external={"url": "http://a/verify"}), "spec.auth",
         "external applies to method External only: add External to methods"),
        (auth(mode="FirstMessage", methods=["External"], external={"url": "http://a/v"}),
         "spec.auth", "External reads the handshake's headers: it needs mode Handshake"),
        (auth(methods=["External"], external={"url": "http://a/v",
                                              "requestHeaders": ["Cookie", "Upgrade"]}),
         "spec.auth.external", "requestHeaders cannot name hop-by-hop headers, Upgrade, "
         "Connection, Host, Sec-WebSocket-* or X-Forwarded-* (the proxy sets X-Forwarded-* "
         "itself)"),
        (auth(methods=["JWT"], jwt={"providers": [{"issuer": "https://idp.test"},
                                                  {"issuer": "https://idp.test"}]}),
         "spec.auth.jwt", "each provider's issuer must be different"),
        (auth(methods=["External"], external={"url": "http://a/v",
                                              "requestHeaders": ["X_Forwarded_For"]}),
         "spec.auth.external", "requestHeaders cannot name hop-by-hop headers, Upgrade, "
         "Connection, Host, Sec-WebSocket-* or X-Forwarded-* (the proxy sets X-Forwarded-* "
         "itself)"),
    ]
    cases.append((auth(methods=["External"], external={"url": "http://a/v",
                                                       "recheckSeconds": 0.001}),
                   "spec.auth.external", "recheckSeconds is 0 (never) or at least 0.5"))
    not_settable = ("cannot name hop-by-hop headers, Host, Content-Length, Transfer-Encoding, "
                    "Upgrade, Connection, Sec-WebSocket-*, X-Consumer-Username or "
                    "X-Forwarded-For/-Proto/-Host (the proxy sets those itself)")
    for name in ("Transfer-Encoding", "content_length", "Sec-WebSocket-Accept", "Host",
                 "X-Consumer-Username", "x_forwarded_for"):
        cases += [
            (auth(methods=["External"], external={"url": "http://a/v",
                                                  "responseHeaders": ["X-User", name]}),
             "spec.auth.external", "responseHeaders " + not_settable),
            (auth(methods=["External"], external={"url": "http://a/v",
                                                  "identityHeader": name}),
             "spec.auth.external", "identityHeader " + not_settable),
            (auth(methods=["JWT"], jwt={"providers": [{"issuer": "https://idp.test",
                                                       "claimsToHeaders": [
                                                           {"claim": "sub", "header": name}]}]}),
             "spec.auth.jwt.providers[0].claimsToHeaders[0]", "header " + not_settable),
        ]
    for i, (spec, field, message) in enumerate(cases):
        status, error = await call(http, "POST", ROUTES, route(f"bad{i}", **spec))
        assert status == 422, spec
        assert error["details"]["causes"] == [
            {"reason": "FieldValueInvalid", "field": field, "message": message}], spec
    good = auth(methods=["JWT", "External"],
                external={"url": "https://auth.test/verify", "requestHeaders": ["Cookie"],
                          "recheckSeconds": 30,
                          "responseHeaders": ["X-User-Roles", "X-Forwarded-User"],
                          "identityHeader": "X-User-Id"},
                jwt={"providers": [{"issuer": "https://idp.test", "audiences": ["chat"]}]})
    status, made = await call(http, "POST", ROUTES, route("good", **good))
    assert status == 201, made
    assert made["spec"]["auth"]["external"]["timeoutSeconds"] == 2
    assert made["spec"]["onCredentialExpired"] == "Close"
