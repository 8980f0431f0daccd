from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tests.support import compile_objects, consumer_objects, quickstart_objects
from wsgate_proxy.auth import Authenticator
from wsgate_proxy.config import GatewayConfig, KeyAuthSources, RouteAuth
from wsgate_proxy.credentials import (
    MalformedCredential,
    encode_key_subprotocol,
    find_credential,
    offered_subprotocols,
    strip_cookie,
    strip_query,
)
from wsgate_proxy.passwords import PasswordVerifier
from wsgate_proxy.refusals import AuthFailure

ALL = KeyAuthSources(header="apikey", query="apikey", cookie="session", subprotocol=True)


def find_key(sources, headers, raw_query, protocols):
    return find_credential(RouteAuth(key_auth=sources), headers, raw_query, protocols)


def headers(*pairs):
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_header_first_then_query_cookie_subprotocol():
    h = headers(("apikey", "h"), ("Cookie", "session=c"))
    entry = encode_key_subprotocol("s")
    assert find_key(ALL, h, "apikey=q", [entry]).source == "header"
    assert find_key(ALL, headers(("Cookie", "session=c")), "apikey=q", [entry]).value == "q"
    assert find_key(ALL, headers(("Cookie", "a=1; session=c")), "", [entry]).value == "c"
    found = find_key(ALL, headers(), "", ["chat", entry])
    assert (found.value, found.source, found.subprotocol_entry) == ("s", "subprotocol", entry)
    assert find_key(ALL, headers(), "other=1", ["chat"]) is None


def test_switched_off_sources_are_ignored():
    off = KeyAuthSources(header="", query="", cookie="", subprotocol=False)
    assert find_key(off, headers(("apikey", "h")), "apikey=q",
                    [encode_key_subprotocol("s")]) is None


def test_query_values_are_url_decoded():
    assert find_key(ALL, headers(), "x=1&apikey=a%2Bb%20c", []).value == "a+b c"


def test_subprotocol_encoding_round_trips_any_key():
    for key in ("john-key", "ü/+=?", "a" * 300):
        entry = encode_key_subprotocol(key)
        assert "=" not in entry
        assert find_key(ALL, headers(), "", [entry]).value == key


def test_malformed_subprotocol_entry():
    with pytest.raises(MalformedCredential):
        find_key(ALL, headers(), "", ["base64url.apikey.wsgate.io.%%%"])


def test_offered_subprotocols_across_headers():
    h = headers(("Sec-WebSocket-Protocol", "a, b"), ("Sec-WebSocket-Protocol", "c"))
    assert offered_subprotocols(h) == ["a", "b", "c"]


def test_stripping():
    assert strip_query("a=1&apikey=k&b=2", "apikey") == "a=1&b=2"
    assert strip_query("apikey=k", "apikey") == ""
    assert strip_cookie("a=1; session=k; b=2", "session") == "a=1; b=2"


@pytest.fixture
def config():
    return GatewayConfig.model_validate(compile_objects(
        quickstart_objects(1, 2) + consumer_objects("jane", "jane-key")))


async def authenticate(config, *pairs, route=None):
    return await Authenticator(config.consumers, PasswordVerifier()).authenticate(
        route or config.routes[0], headers(*pairs), "", [])


async def test_authenticates_by_key(config):
    result = await authenticate(config, ("apikey", "jane-key"))
    assert result.identity.consumer.username == "jane"
    assert result.identity.credential_id == "secret/jane-key"


async def test_unknown_key_and_missing_key_are_401_with_a_challenge(config):
    for pairs in ([("apikey", "nope")], []):
        with pytest.raises(AuthFailure) as info:
            await authenticate(config, *pairs)
        assert info.value.status == 401
        assert info.value.challenges[0].startswith('ApiKey realm="default/echo"')


async def test_consumer_not_allowed_is_403(config):
    route = config.routes[0]
    limited = route.model_copy(update={"auth": route.auth.model_copy(
        update={"allowed_consumers": ("john",)})})
    assert (await authenticate(config, ("apikey", "john-key"), route=limited)).identity
    with pytest.raises(AuthFailure) as info:
        await authenticate(config, ("apikey", "jane-key"), route=limited)
    assert info.value.status == 403


async def test_keys_of_another_namespace_do_not_authenticate(config):
    route = config.routes[0].model_copy(update={"namespace": "other"})
    with pytest.raises(AuthFailure):
        await authenticate(config, ("apikey", "john-key"), route=route)
