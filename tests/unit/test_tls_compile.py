from __future__ import annotations

import pytest

from tests.certs import TestCA, tls_secret
from tests.support import quickstart_objects
from wsgate_operator.compiler import Snapshot, compile_snapshot

CA = TestCA()


def route_objects(**spec):
    objects = quickstart_objects(1, 2)
    next(o for o in objects if o["kind"] == "WsRoute")["spec"].update(spec)
    return objects


def test_certificates_carry_the_hosts_of_every_route_naming_them():
    objects = route_objects(hosts=["a.test"], tls={"secretName": "cert"})
    route2 = next(o for o in objects if o["kind"] == "WsRoute")
    objects.append({**route2, "metadata": {"name": "second"},
                    "spec": {**route2["spec"], "hosts": ["b.test"]}})
    objects.append(tls_secret("cert", CA.issue("a.test", "b.test")))
    compiled = compile_snapshot(Snapshot.of(objects))
    assert compiled.problems == []
    (certificate,) = compiled.config.certificates
    assert (certificate.key, certificate.hosts) == ("default/cert", ("a.test", "b.test"))


@pytest.mark.parametrize(
    ("secret", "reason", "words"),
    [
        (None, "SecretNotFound", "Secret default/cert does not exist"),
        ({"tls.crt": "x"}, "SecretKeyMissing", "no 'tls.key'"),
        ({"tls.crt": "not pem", "tls.key": "not pem"}, "InvalidCertificate",
         "'tls.crt' is not PEM certificates"),
    ],
)
def test_certificate_problems(secret, reason, words):
    objects = route_objects(hosts=["a.test"], tls={"secretName": "cert"})
    if secret is not None:
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cert"},
                        "stringData": secret})
    compiled = compile_snapshot(Snapshot.of(objects))
    (problem,) = compiled.problems
    assert (problem.field, problem.reason) == ("spec.tls.secretName", reason)
    assert words in problem.message
    assert compiled.config.certificates == ()
    assert len(compiled.config.routes) == 1  # plain ws:// still served


def test_tls_needs_hosts():
    compiled = compile_snapshot(Snapshot.of(route_objects(tls={"secretName": "cert"})))
    (problem,) = compiled.problems
    assert problem.invalid
    assert "tls needs hosts" in problem.message


def test_backend_tls_defaults_to_the_services_dns_name():
    backend = {"service": {"name": "echo", "port": 8080}, "tls": {}}
    (route,) = compile_snapshot(Snapshot.of(route_objects(backend=backend))).config.routes
    assert route.backend.tls.server_name == "echo.default.svc"
    assert route.backend.tls.ca_pem is None
