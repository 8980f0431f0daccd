"""The chart's shared connection limits (limits.redis): the proxies' arguments, the URL
from a Secret, the password file, and the optional Redis for trying it (deploy)."""

from __future__ import annotations

import base64

import helm_python as helm
import pytest

from tests.chart.test_chart import CHART, COMBINATIONS, find, render
from wsgate.cli import parser, store_options

LIMITS = {name.removeprefix("redis-"): values for name, values in COMBINATIONS.items()
          if name.startswith("redis-")}  # also linted and validated there


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def proxy_container(objects: list[dict]) -> dict:
    return find(objects, "Deployment", "proxy")["spec"]["template"]["spec"]["containers"][0]


def limits_args(container: dict) -> list[str]:
    return [a for a in container["args"] if a.startswith("--limits-")]


def test_without_a_redis_each_proxy_counts_its_own(chart):
    objects = render(chart)
    container = proxy_container(objects)
    assert limits_args(container) == []
    assert "env" not in container
    assert not [o for o in objects if o["metadata"]["name"].endswith("-redis")]


def test_a_url_reaches_the_proxies_and_the_proxy_accepts_their_arguments(chart):
    container = proxy_container(render(chart, LIMITS["url"]))
    assert limits_args(container) == [
        "--limits-redis-url=redis://redis.infra:6379/2", "--limits-redis-failure=open",
        "--limits-lease-seconds=30", "--limits-renew-seconds=10",
        "--limits-redis-timeout=0.25"]
    options = store_options(parser().parse_args(container["args"]))
    assert options is not None
    assert (options.url, options.failure, options.lease_seconds, options.renew_seconds,
            options.timeout_seconds) == ("redis://redis.infra:6379/2", "open", 30, 10, 0.25)


def test_a_url_with_a_password_comes_from_a_secret(chart):
    spec = find(render(chart, LIMITS["secrets"]), "Deployment", "proxy")["spec"][
        "template"]["spec"]
    container = spec["containers"][0]
    assert container["env"] == [{"name": "WSGATE_LIMITS_REDIS_URL", "valueFrom": {
        "secretKeyRef": {"name": "wsgate-redis-url", "key": "url"}}}]
    assert not [a for a in container["args"] if a.startswith("--limits-redis-url")]
    assert "--limits-redis-failure=closed" in container["args"]
    assert "--limits-redis-password-file=/var/run/wsgate/limits-redis/password" in \
        container["args"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "limits-redis"]
    assert volume["secret"] == {"secretName": "wsgate-redis-password",
                                "items": [{"key": "password", "path": "password"}]}
    assert {"name": "limits-redis", "mountPath": "/var/run/wsgate/limits-redis",
            "readOnly": True} in container["volumeMounts"]


def test_deploy_runs_one_redis_that_only_the_proxies_reach_with_a_generated_password(chart):
    objects = render(chart, LIMITS["deploy"])
    container = proxy_container(objects)
    service = find(objects, "Service", "-redis")
    assert service["spec"]["ports"] == [{"name": "redis", "port": 6379, "targetPort": "redis"}]
    assert f"--limits-redis-url=redis://{service['metadata']['name']}:6379/0" in \
        container["args"]
    assert "--limits-lease-seconds=20" in container["args"]
    assert "--limits-renew-seconds=5" in container["args"]

    secret = find(objects, "Secret", "-redis")
    password = base64.b64decode(secret["data"]["password"]).decode()
    config = base64.b64decode(secret["data"]["redis.conf"]).decode()
    assert len(password) == 32
    assert f"requirepass {password}\n" in config
    assert 'save ""' in config
    assert "appendonly no" in config
    proxy = find(objects, "Deployment", "proxy")["spec"]["template"]["spec"]
    (volume,) = [v for v in proxy["volumes"] if v["name"] == "limits-redis"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]

    redis = find(objects, "Deployment", "-redis")["spec"]["template"]
    (server,) = redis["spec"]["containers"]
    assert server["image"] == "redis:7.4-alpine"
    assert server["args"] == ["/etc/redis/redis.conf"]  # the password is not on a command line
    assert server["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert service["spec"]["selector"].items() <= redis["metadata"]["labels"].items()

    policy = find(objects, "NetworkPolicy", "-redis")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        redis["metadata"]["labels"].items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    proxy_labels = find(objects, "Deployment", "proxy")["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    assert rule["ports"] == [{"port": "redis"}]
    assert not [o for o in render(chart, LIMITS["deploy-no-policy"])
                if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"limits": {"redis": {"url": "http://redis:6379"}}}, "url"),
        ({"limits": {"redis": {"failure": "maybe"}}}, "failure"),
        ({"limits": {"redis": {"leaseSeconds": 0}}}, "leaseSeconds"),
        ({"limits": {"redis": {"timeoutSeconds": "fast"}}}, "timeoutSeconds"),
        ({"limits": {"redis": {"deplyo": True}}}, "deplyo"),
    ],
)
def test_the_values_schema_rejects_limits_mistakes(chart, values, words):
    with pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"limits": {"redis": {"url": "redis://r", "leaseSeconds": 10, "renewSeconds": 6}}},
         "at most half"),
        ({"limits": {"redis": {"deploy": True, "url": "redis://r"}}}, "runs its own Redis"),
    ],
)
def test_values_that_cannot_work_together_fail_the_render(chart, values, words):
    with pytest.raises(helm.HelmRenderError, match=words):
        render(chart, values)
