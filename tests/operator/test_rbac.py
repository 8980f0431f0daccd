"""The chart grants the operator exactly what it calls: every request the real operator
makes against the API emulator (kopf's lists and watches, its own start-up lists,
status patches, Events) is allowed by the chart's RBAC, and every rule is used."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from tests.kube.emulator import Access, ApiServer
from tests.operator.conftest import PROXY_NAMESPACE
from tests.support import ROOT, eventually, objects_for

Grant = tuple[str, str, str]  # API group, resource, verb


def granted_rules(values: dict) -> dict[str, set[Grant]]:
    """What the chart grants the operator, by namespace ("" for a ClusterRole)."""
    chart = helm.Chart.load(str(ROOT / "helm" / "wsgate"))
    rendered = chart.render(values, name="wsgate", namespace=PROXY_NAMESPACE, is_install=True)
    objects = [doc for path, text in rendered.items() if path.endswith("rbac.yaml")
               for doc in yaml.safe_load_all(text) if doc]
    grants: dict[str, set[Grant]] = {}
    for role in objects:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        where = grants.setdefault(role["metadata"].get("namespace", ""), set())
        for rule in role["rules"]:
            where |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                      for v in rule["verbs"]}
    return grants


async def exercise(api: ApiServer, proxies, upstream, namespace: str = "default") -> None:
    """What the operator does in a cluster: start, build, push, write statuses and
    Events on routes and consumers, and an Event on a proxy Pod it cannot push to."""
    proxies.start("proxy-a", 0)
    for obj in objects_for(upstream.port):
        obj["metadata"]["namespace"] = namespace
        api.apply(obj)

    async def programmed():
        route = api.get("wsgate.io/v1alpha1", "WsRoute", "echo", namespace)
        assert {c["type"]: c["status"] for c in route["status"]["conditions"]}[
            "Programmed"] == "True"

    await eventually(programmed, timeout=15)
    proxies.start("stranger", 1, token="another-token")

    async def reported():
        assert [e["reason"] for e in api.objects("v1", "Event", PROXY_NAMESPACE)
                if e["involvedObject"]["name"] == "stranger"] == ["PushFailed"]
        assert "Accepted" in {e["reason"] for e in api.objects("v1", "Event", namespace)
                              if e["involvedObject"]["name"] == "echo"}

    await eventually(reported, timeout=10)


def used(api: ApiServer) -> set[Access]:
    return set(api.requests)  # since the CRDs were installed: the operator's own


async def test_cluster_wide_rbac_is_exactly_what_the_operator_calls(api, proxies, operator,
                                                                    upstream):
    await exercise(api, proxies, upstream)
    calls = used(api)
    ((where, grants),) = granted_rules({}).items()
    assert where == ""
    assert {(a.group, a.resource, a.verb) for a in calls} == grants


class TestNamespaced:
    @pytest.fixture
    def operator_options(self, operator_options):
        operator_options.namespaces = ["team-a"]
        return operator_options

    async def test_namespaced_rbac_is_exactly_what_the_operator_calls(self, api, proxies,
                                                                      operator, upstream):
        await exercise(api, proxies, upstream, namespace="team-a")
        grants = granted_rules({"operator": {"watchNamespaces": ["team-a"]}})
        assert set(grants) == {"team-a", PROXY_NAMESPACE}  # Roles only: nothing cluster-wide
        calls = used(api)
        for call in calls:
            assert (call.group, call.resource, call.verb) in grants.get(call.namespace, set()), \
                call
        # Every rule is used somewhere (the same rules go to each namespace).
        assert {(a.group, a.resource, a.verb) for a in calls} == set().union(*grants.values())
