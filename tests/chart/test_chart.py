"""The Helm chart, rendered with Helm's own SDK, linted, and validated offline against the
Kubernetes schemas; what matters in the rendered objects is asserted."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.kube.validation import KUBERNETES_VERSIONS
from tests.support import ROOT

CHART = ROOT / "helm" / "wsgate"
NAMESPACE = "wsgate-system"


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(chart: helm.Chart, values: dict | None = None) -> list[dict]:
    rendered = chart.render(values or {}, name="wsgate", namespace=NAMESPACE, is_install=True)
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def notes(chart: helm.Chart, values: dict | None = None) -> str:
    rendered = chart.render(values or {}, name="wsgate", namespace=NAMESPACE, is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def find(objects: list[dict], kind: str, suffix: str = "") -> dict:
    return next(o for o in objects
                if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))


COMBINATIONS = {
    "defaults": {},
    "nodeport": {"service": {"type": "NodePort", "nodePort": 30080}},
    "loadbalancer": {"service": {"type": "LoadBalancer"}, "proxy": {"tls": {"enabled": True}}},
    "hpa": {"autoscaling": {"enabled": True}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "namespaces": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    # Shared connection limits (tests/chart/test_chart_limits.py)
    "redis-url": {"limits": {"redis": {"url": "redis://redis.infra:6379/2"}}},
    "redis-secrets": {"limits": {"redis": {"existingSecret": "wsgate-redis-url",
                                           "passwordSecret": "wsgate-redis-password",
                                           "failure": "closed"}}},
    "redis-deploy": {"limits": {"redis": {"deploy": True, "leaseSeconds": 20,
                                          "renewSeconds": 5}}},
    "redis-deploy-no-policy": {"limits": {"redis": {"deploy": True}},
                               "networkPolicy": {"enabled": False}},
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_every_combination_renders_lints_and_validates(chart, combination, version):
    # For the oldest and the newest Kubernetes the README supports: what
    # `kubernetes-validate --strict -k VERSION` says of every rendered object.
    values = COMBINATIONS[combination]
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{version}")
    errors = [m for m in report["messages"] if m["severity"] >= 2 and "icon" not in m["error"]]
    assert (report["errors"], errors) == ([], [])
    for obj in render(chart, values):
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "wsgate"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "wsgate"
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # not a Kubernetes schema
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crds_are_the_same_files_as_crds_and_validate(chart, version):
    shipped = {c["name"]: c["data"] for c in chart.crds}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        assert shipped[f"crds/{path.name}"] == path.read_text()
        for crd in yaml.safe_load_all(shipped[f"crds/{path.name}"]):
            kubernetes_validate.validate(crd, version, strict=True)
    assert len(shipped) == 2


# Exactly what the operator calls (tests/operator/test_rbac.py records the calls).
EXPECTED_RULES = [
    {"apiGroups": ["wsgate.io"], "resources": ["wsroutes", "wsconsumers"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["wsgate.io"], "resources": ["wsroutes/status", "wsconsumers/status"],
     "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets", "services", "pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def test_rbac_is_exactly_what_the_operator_needs(chart):
    objects = render(chart)
    assert find(objects, "ClusterRole")["rules"] == EXPECTED_RULES
    binding = find(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wsgate-operator",
                                    "namespace": NAMESPACE}]
    scoped = render(chart, COMBINATIONS["namespaces"])
    assert not [o for o in scoped if o["kind"].startswith("Cluster")]
    roles = [o for o in scoped if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b", NAMESPACE]
    assert all(r["rules"] == EXPECTED_RULES for r in roles)
    args = find(scoped, "Deployment", "operator")["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args


def test_proxy_has_probes_a_pdb_graceful_drain_and_runs_as_non_root(chart):
    objects = render(chart)
    proxy = find(objects, "Deployment", "proxy")["spec"]["template"]["spec"]
    container = proxy["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert "--drain-seconds=30" in container["args"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert proxy["terminationGracePeriodSeconds"] == 45
    pdb = find(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "proxy"
    for deployment in ("proxy", "operator"):
        spec = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        security = spec["containers"][0]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False


def test_the_admin_token_reaches_both_and_the_operator_finds_the_proxies(chart):
    objects = render(chart)
    secret = find(objects, "Secret", "admin-token")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["data"]["token"]) >= 48
    for deployment in ("proxy", "operator"):
        spec = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "admin-token"]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert "--admin-token-file=/var/run/wsgate/admin-token/token" in \
            spec["containers"][0]["args"]
    operator = find(objects, "Deployment", "operator")["spec"]["template"]["spec"]
    args = operator["containers"][0]["args"]
    selector = next(a for a in args if a.startswith("--proxy-selector="))
    proxy_labels = find(objects, "Deployment", "proxy")["spec"]["template"]["metadata"]["labels"]
    for pair in selector.removeprefix("--proxy-selector=").split(","):
        key, value = pair.split("=")
        assert proxy_labels[key] == value
    assert f"--proxy-namespace={NAMESPACE}" in args


def test_network_policy_opens_the_admin_port_to_the_operator_only(chart):
    objects = render(chart)
    policy = find(objects, "NetworkPolicy")
    proxy_labels = find(objects, "Deployment", "proxy")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    clients, admin = policy["spec"]["ingress"]
    assert "from" not in clients
    assert clients["ports"] == [{"port": "ws"}]
    operator_labels = find(objects, "Deployment", "operator")["spec"]["template"]["metadata"][
        "labels"]
    (source,) = admin["from"]
    assert source["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert admin["ports"] == [{"port": "admin"}]


def test_service_types_and_optional_objects(chart):
    service = find(render(chart, COMBINATIONS["nodeport"]), "Service", "proxy")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30080
    kinds = {o["kind"] for o in render(chart, {**COMBINATIONS["hpa"],
                                               **COMBINATIONS["monitoring"]})}
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"} <= kinds
    assert not {"HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"} & {
        o["kind"] for o in render(chart)}


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"proxy": {"replicas": "two"}}, "replicas"),
        ({"proxy": {"replicas": 0}}, "replicas"),
        ({"service": {"type": "Ingress"}}, "type"),
        ({"service": {"port": 70000}}, "port"),
        ({"service": {"nodePort": 80}}, "nodePort"),
        ({"proxy": {"replica": 2}}, "replica"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"serviceMonitor": {"interval": "often"}}, "interval"),
    ],
)
def test_the_values_schema_rejects_mistakes(chart, values, words):
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert words in str(info.value)


def test_notes_show_kind_users_the_address_their_kind_config_maps(chart):
    # kind-config.yaml maps a node port to a port on the host's loopback; with that node
    # port, NOTES names the host address first (the chart cannot tell kind from others).
    (node,) = yaml.safe_load((ROOT / "kind-config.yaml").read_text())["nodes"]
    (mapping,) = node["extraPortMappings"]
    kind = notes(chart, {"service": {"type": "NodePort", "nodePort": mapping["containerPort"]}})
    host = f"ws://{mapping['listenAddress']}:{mapping['hostPort']}/.ws"
    assert host == "ws://127.0.0.1:9080/.ws"
    assert f"websocat {host}" in kind
    assert "<node address>:30080" in kind  # other clusters: any node's address
    other = notes(chart, {"service": {"type": "NodePort", "nodePort": 31000}})
    assert "127.0.0.1:9080" not in other
    assert "nodePort}" in other  # how to look the node port up
    assert "port-forward" in notes(chart)
    assert "loadBalancer.ingress" in notes(chart, COMBINATIONS["loadbalancer"])
