"""External auth through the operator: a route whose auth server speaks https with a
private CA, the CA's Secret missing (ResolvedRefs says so; handshakes fail closed) and
then created (served)."""

from __future__ import annotations

import base64

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.certs import TestCA
from tests.peers import AuthServerProcess
from tests.support import eventually, objects_for, route

pytestmark = pytest.mark.timeout(90)
CR = "wsgate.io/v1alpha1"


def conditions(obj):
    return {c["type"]: (c["status"], c["reason"], c["message"])
            for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.fixture
def tls_auth_server(tmp_path):
    ca = TestCA()
    leaf = ca.issue("127.0.0.1")
    cert, key = tmp_path / "auth.crt", tmp_path / "auth.key"
    cert.write_text(leaf.cert_pem)
    key.write_text(leaf.key_pem)
    server = AuthServerProcess(tls=(str(cert), str(key)), ca_pem=ca.pem).start()
    yield server, ca
    server.stop()


async def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        async with connect(url, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_missing_ca_secret_is_named_and_its_creation_serves(api, proxies, operator,
                                                                    apply, upstream,
                                                                    tls_auth_server):
    server, ca = tls_auth_server
    proxies.start("proxy-a", 0)
    apply(*objects_for(upstream.port), route("ext", "/ext", {
        "methods": ["External"],
        "external": {"url": server.url(), "identityHeader": "X-User-Id",
                     "caSecretRef": {"name": "auth-ca"}}}))
    url = proxies.url("proxy-a", "/ext")
    cookie = {"Cookie": f"session={await server.login('alice')}"}

    async def unresolved():
        found = conditions(api.get(CR, "WsRoute", "ext"))
        status, reason, message = found["ResolvedRefs"]
        assert (status, reason) == ("False", "SecretNotFound")
        assert "spec.auth.external.caSecretRef" in message
        assert "Secret default/auth-ca does not exist" in message
        assert found["Programmed"][0] == "True"
    await eventually(unresolved, timeout=15)
    # Programmed all the same, and failing closed: a CA that is named but missing trusts
    # nothing (never the system's roots).
    assert await status_of(url, cookie) == 503

    apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "auth-ca"},
           "data": {"ca.crt": base64.b64encode(ca.pem.encode()).decode()}})

    async def resolved():
        assert conditions(api.get(CR, "WsRoute", "ext"))["ResolvedRefs"][0] == "True"
        assert await status_of(url, cookie) == 101
    await eventually(resolved, timeout=15)
    assert upstream.requests[-1].headers["X-Consumer-Username"] == "alice"
