"""wss:// to the proxy (certificates by SNI, renewed with the config) and to upstreams."""

from __future__ import annotations

import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.certs import TestCA, server_context, tls_secret
from tests.support import KEY, Admin, RecordingUpstream, compile_objects, objects_for


@pytest.fixture(scope="module")
def ca():
    return TestCA()


def tls_objects(ca, upstream_port, leaf=None):
    objects = objects_for(upstream_port)
    route = next(o for o in objects if o["kind"] == "WsRoute")
    route["spec"].update(hosts=["ws.example.test"], tls={"secretName": "ws-tls"})
    wild = {**route, "metadata": {"name": "wild"},
            "spec": {**route["spec"], "hosts": ["*.wild.test"], "tls": {"secretName": "wild"}}}
    return [*objects, wild,
            tls_secret("ws-tls", leaf or ca.issue("ws.example.test")),
            tls_secret("wild", ca.issue("*.wild.test"))]


@pytest.fixture
async def tls_proxy(serve, upstream, ca):
    served = await serve(objects=tls_objects(ca, upstream.port),
                         proxy_args=("--tls-listen", "127.0.0.1:0"))
    return served.proxy, served.admin, served.proxy.address("tls_listen")[1]


def wss(host: str, port: int, ca, **kwargs):
    return connect(f"wss://{host}:{port}/.ws", host="127.0.0.1", port=port,
                   ssl=ca.client_context(), server_hostname=host,
                   additional_headers=KEY, **kwargs)


def peer_serial(ws) -> int:
    from cryptography import x509

    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_wss_with_the_certificate_of_the_host(tls_proxy, ca, upstream):
    _, _, port = tls_proxy
    async with wss("ws.example.test", port, ca) as ws:
        await ws.send("over tls")
        assert await ws.recv() == "over tls"
    assert upstream.requests[-1].headers["X-Forwarded-Proto"] == "https"
    async with wss("room.wild.test", port, ca) as ws:  # the wildcard's certificate
        await ws.send("wild")
        assert await ws.recv() == "wild"


async def test_an_unknown_server_name_is_refused_in_the_tls_handshake(tls_proxy, ca):
    _, _, port = tls_proxy
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # an alert, or a reset
        async with wss("other.test", port, ca):
            pass


async def test_a_renewed_certificate_is_served_with_the_next_config(tls_proxy, ca, upstream):
    _, admin, port = tls_proxy
    live = await wss("ws.example.test", port, ca)
    old = peer_serial(live)
    renewed = ca.issue("ws.example.test")
    await admin.put_config(compile_objects(tls_objects(ca, upstream.port, renewed)))
    async with wss("ws.example.test", port, ca) as ws:
        assert peer_serial(ws) == renewed.serial != old
    await live.send("the old connection goes on")
    assert await live.recv() == "the old connection goes on"
    await live.close()


async def test_wss_upstream_verified_against_the_routes_ca(start_proxy, ca):
    leaf = ca.issue("upstream.test")
    async with RecordingUpstream(ssl=server_context(leaf)) as secure:
        ca_secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "upstream-ca"},
                     "stringData": {"ca.crt": ca.pem}}
        objects = [*objects_for(secure.port), ca_secret]
        backend = next(o for o in objects if o["kind"] == "WsRoute")["spec"]["backend"]
        proxy = start_proxy()
        admin = Admin(proxy.admin_port)
        url = f"ws://127.0.0.1:{proxy.port}/.ws"

        backend["tls"] = {"serverName": "upstream.test", "caSecretRef": {"name": "upstream-ca"}}
        await admin.put_config(compile_objects(objects))
        async with connect(url, additional_headers=KEY) as ws:
            await ws.send("to a wss upstream")
            assert await ws.recv() == "to a wss upstream"

        backend["tls"] = {"serverName": "upstream.test"}  # system roots: our CA is not one
        await admin.put_config(compile_objects(objects))
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers=KEY):
                pass
        assert info.value.response.status_code == 502
        body = info.value.response.body
        assert b"TLS failed: CERTIFICATE_VERIFY_FAILED" in body
        assert b"127.0.0.1" not in body  # internal addresses stay in the proxy's log

        backend["tls"] = {"serverName": "wrong.test", "caSecretRef": {"name": "upstream-ca"}}
        await admin.put_config(compile_objects(objects))
        with pytest.raises(InvalidStatus):
            async with connect(url, additional_headers=KEY):
                pass
