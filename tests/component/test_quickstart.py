"""The quickstart flow, through a real standalone proxy, real `wsgate echo` upstreams
and the `websockets` library as an independent client."""

from __future__ import annotations

import os
from collections.abc import Iterator

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import copy_quickstart
from wsgate.processes import WsgateProcess
from wsgate_proxy.credentials import encode_key_subprotocol

KEY = {"apikey": "john-key"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, echo_a, echo_b) -> Iterator[WsgateProcess]:
    manifests = copy_quickstart(tmp_path_factory.mktemp("quickstart"), echo_a.port, echo_b.port)
    with WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                       "--manifests", str(manifests), name="proxy") as proc:
        proc.wait_for_log(lambda r: r.get("event") == "config applied")
        yield proc


@pytest.fixture
def url(proxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/.ws"


async def refused(url: str, **kwargs) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    response = info.value.response
    return response.status_code, response.body.decode()


async def test_no_key_is_401_before_any_upgrade(url):
    status, body = await refused(url)
    assert status == 401
    assert "no credential presented; send an API key in header 'apikey'" in body


async def test_401_is_a_plain_http_answer(proxy):
    # aiohttp's client sees an HTTP response, not an upgraded socket that closes.
    async with aiohttp.ClientSession() as http:
        headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        async with http.get(f"http://127.0.0.1:{proxy.port}/.ws", headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("ApiKey ")
            assert "Upgrade" not in response.headers


async def test_wrong_key_is_401(url):
    status, body = await refused(url, additional_headers={"apikey": "not-johns-key"})
    assert status == 401
    assert "not valid" in body
    assert "not-johns-key" not in body


async def test_header_key_greets_and_echoes(url):
    async with connect(url, additional_headers=KEY) as ws:
        assert (await ws.recv()).startswith("Request served by ")
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary\xff")
        assert await ws.recv() == b"\x00\x01binary\xff"


async def test_round_robin_alternates_between_both_upstreams(url):
    served = []
    for _ in range(4):
        async with connect(url, additional_headers=KEY) as ws:
            served.append(await ws.recv())
    assert set(served) == {"Request served by a", "Request served by b"}
    assert served[0] != served[1]
    assert served[0::2] == [served[0]] * 2
    assert served[1::2] == [served[1]] * 2


async def test_query_parameter_key(url):
    async with connect(url + "?apikey=john-key") as ws:
        assert (await ws.recv()).startswith("Request served by ")


async def test_subprotocol_key_is_selected_when_it_is_the_only_offer(url):
    entry = encode_key_subprotocol("john-key")
    async with connect(url, subprotocols=[entry]) as ws:
        # A browser fails a handshake whose answer selects none of its offers.
        assert ws.subprotocol == entry
        assert (await ws.recv()).startswith("Request served by ")
        await ws.send("hi")
        assert await ws.recv() == "hi"


async def test_subprotocol_key_with_an_application_protocol(url):
    entry = encode_key_subprotocol("john-key")
    async with connect(url, subprotocols=[entry, "echo"]) as ws:
        assert ws.subprotocol == "echo"  # chosen by the upstream, passed through


async def test_wrong_subprotocol_key_is_401(url):
    status, _ = await refused(url, subprotocols=[encode_key_subprotocol("nope")])
    assert status == 401


async def test_plain_get_is_426(proxy):
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{proxy.port}/.ws", headers=KEY) as response,
    ):
        assert response.status == 426
        assert response.headers["Upgrade"] == "websocket"
        assert "WebSocket only" in await response.text()


async def test_unknown_path_is_404(proxy):
    status, body = await refused(f"ws://127.0.0.1:{proxy.port}/elsewhere",
                                 additional_headers=KEY)
    assert status == 404
    assert "no route" in body


async def test_prefix_matches_whole_segments_only(proxy):
    status, _ = await refused(f"ws://127.0.0.1:{proxy.port}/.wsx", additional_headers=KEY)
    assert status == 404
    async with connect(f"ws://127.0.0.1:{proxy.port}/.ws/room/1", additional_headers=KEY) as ws:
        assert (await ws.recv()).startswith("Request served by ")


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_one_mebibyte_message_both_ways(url, compression):
    payload = os.urandom(1 << 20)
    async with connect(url, additional_headers=KEY, max_size=None,
                       compression=compression) as ws:
        await ws.recv()
        await ws.send(payload)
        assert await ws.recv() == payload


async def test_many_messages_in_flight_arrive_in_order(url):
    async with connect(url, additional_headers=KEY) as ws:
        await ws.recv()
        for i in range(500):
            await ws.send(f"m{i}")
        for i in range(500):
            assert await ws.recv() == f"m{i}"
