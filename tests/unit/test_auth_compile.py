"""Compiling spec.auth.external, spec.auth.jwt.providers and onCredentialExpired."""

from __future__ import annotations

from tests.support import objects_for, route
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_proxy.config import GatewayConfig


def compiled(auth: dict, *extra: dict, **spec):
    objects = [*objects_for(9001), route("r", "/r", auth, **spec), *extra]
    result = compile_snapshot(Snapshot.of(objects))
    found = {r.name: r for r in result.config.routes}
    return found.get("r"), [p for p in result.problems if p.ref.name == "r"]


def ca_secret(name: str, pem: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"ca.crt": pem}}


def test_external_compiles_with_its_ca_and_a_missing_ca_trusts_nothing():
    from tests.certs import TestCA

    auth = {"methods": ["KeyAuth", "External"],
            "external": {"url": "https://auth.test/verify", "responseHeaders": ["X-User-Id"],
                         "identityHeader": "X-User-Id", "recheckSeconds": 30,
                         "caSecretRef": {"name": "auth-ca"}}}
    route_, problems = compiled(auth, onCredentialExpired="Keep")
    assert route_ is not None
    assert route_.on_credential_expired == "Keep"
    assert route_.auth.external.ca_pem == "unusable"  # never the system's roots
    (problem,) = problems
    assert (problem.field, problem.reason) == ("spec.auth.external.caSecretRef",
                                               "SecretNotFound")
    assert "Secret default/auth-ca does not exist" in problem.message
    ca = TestCA()
    route_, problems = compiled(auth, ca_secret("auth-ca", ca.pem))
    assert problems == []
    assert route_.auth.external.ca_pem == ca.pem
    assert route_.auth.external.recheck_seconds == 30
    assert route_.auth.external.request_headers == ("Cookie", "Authorization")


def test_providers_compile_and_round_trip_through_the_contract():
    auth = {"methods": ["JWT"], "jwt": {
        "clockSkewSeconds": 5, "cookie": "at",
        "providers": [{"issuer": "https://idp.test/realms/a", "audiences": ["chat"],
                       "requiredClaims": [{"name": "scope", "values": ["chat"]}],
                       "claimsToHeaders": [{"claim": "sub", "header": "X-User-Id"}],
                       "identityClaim": "email"}]}}
    route_, problems = compiled(auth)
    assert problems == []
    provider = route_.auth.jwt.providers[0]
    assert (provider.issuer, provider.audiences, provider.identity_claim) == (
        "https://idp.test/realms/a", ("chat",), "email")
    assert provider.required_claims[0].values == ("chat",)
    assert (route_.auth.jwt.clock_skew_seconds, route_.auth.jwt.cookie) == (5, "at")
    config = GatewayConfig.build(routes=[route_], consumers=[])
    assert GatewayConfig.model_validate(config.model_dump(mode="json")) == config


def test_auth_settings_that_cannot_work_are_refused_naming_the_field():
    cases = [
        ({"methods": ["External"]}, "method External needs external"),
        ({"mode": "FirstMessage", "methods": ["External"],
          "external": {"url": "http://a/v"}}, "it needs mode Handshake"),
        ({"methods": ["External"], "external": {"url": "http://a/v",
                                                "requestHeaders": ["Sec-WebSocket-Key"]}},
         "requestHeaders cannot name 'Sec-WebSocket-Key'"),
        ({"methods": ["External"], "external": {"url": "http://a/v",
                                                "requestHeaders": ["X_Forwarded_Host"]}},
         "requestHeaders cannot name 'X_Forwarded_Host'"),
        ({"methods": ["External"], "external": {"url": "http://a/v",
                                                "responseHeaders": ["Transfer-Encoding"]}},
         "responseHeaders cannot name 'Transfer-Encoding'"),
        ({"methods": ["External"], "external": {"url": "http://a/v",
                                                "identityHeader": "x_consumer_username"}},
         "identityHeader cannot name 'x_consumer_username'"),
        ({"methods": ["JWT"], "jwt": {"providers": [{"issuer": "https://a", "claimsToHeaders": [
            {"claim": "sub", "header": "Content-Length"}]}]}},
         "header cannot name 'Content-Length'"),
        ({"methods": ["External"], "external": {"url": "http://a/v", "recheckSeconds": 0.01}},
         "recheckSeconds is 0 (never) or at least 0.5"),
        ({"methods": ["External"], "external": {"url": "ftp://a/v"}},
         "is not an http:// or https:// URL"),
        ({"methods": ["JWT"], "jwt": {"providers": [{"issuer": "https://a"},
                                                    {"issuer": "https://a"}]}},
         "each provider's issuer must be different"),
    ]
    for auth, words in cases:
        route_, problems = compiled(auth)
        assert route_ is None, auth
        assert any(words in p.message and p.field.startswith("spec.auth")
                   for p in problems), (words, problems)


def test_the_proxy_refuses_a_config_that_would_set_its_own_headers_from_an_answer():
    """Defence in depth: a config that did not come through the CRD (a hand-written
    one, an older operator) cannot make an auth server's answer or a token's claim set
    the framing, the handshake or the proxy's own headers on the upstream request."""
    import pytest
    from pydantic import ValidationError

    from wsgate_proxy.config import ClaimHeader, ExternalAuth

    for name in ("Transfer-Encoding", "Content_Length", "Host", "Connection", "Upgrade",
                 "Sec-WebSocket-Key", "sec_websocket_protocol", "X-Consumer-Username",
                 "X-Forwarded-For", "x-forwarded-proto"):
        with pytest.raises(ValidationError, match="cannot be set on the upstream request"):
            ExternalAuth(url="http://a/v", response_headers=("X-User", name))
        with pytest.raises(ValidationError, match="cannot be set on the upstream request"):
            ExternalAuth(url="http://a/v", identity_header=name)
        with pytest.raises(ValidationError, match="cannot be set on the upstream request"):
            ClaimHeader(claim="sub", header=name)
    assert ExternalAuth(url="http://a/v", response_headers=("X-Forwarded-User",),
                        identity_header="X-User-Id").identity_header == "X-User-Id"
