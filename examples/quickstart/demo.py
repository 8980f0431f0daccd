"""`make demo`: the quickstart flow on this machine, step by step.

Starts two `wsgate echo` upstreams (127.0.0.1:9001 and :9002, as the manifests in
this folder say) and `wsgate proxy --manifests examples/quickstart` on
127.0.0.1:9080, then walks through what a client sees. Everything it started is
stopped when it ends, on error or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from wsgate.processes import WsgateProcess
from wsgate_proxy.credentials import encode_key_subprotocol

HERE = Path(__file__).resolve().parent
PROXY = "127.0.0.1:9080"
URL = f"ws://{PROXY}/.ws"
PORTS = {9001: "echo upstream a", 9002: "echo upstream b", 9080: "proxy", 9901: "admin API"}


def step(title: str) -> None:
    print(f"\n\033[1m▶ {title}\033[0m")


def show(text: str) -> None:
    print(f"  {text}")


HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


async def refusal(url: str, headers: dict[str, str] | None = None) -> str:
    """The HTTP answer to a handshake the proxy refuses, with its explanation."""
    http_url = url.replace("ws://", "http://", 1)
    async with aiohttp.ClientSession() as http, http.get(
        http_url, headers={**HANDSHAKE, **(headers or {})}
    ) as response:
        return f"HTTP {response.status} {response.reason}: {(await response.text()).strip()}"


async def try_connect(url: str, **kwargs) -> aiohttp.ClientWebSocketResponse:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url, **kwargs)
    ws._demo_session = session  # closed with the socket below
    return ws


async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.close()
    await ws._demo_session.close()


async def walk_through() -> None:
    step("No credentials: refused with 401 before any upgrade")
    show(f"$ websocat {URL}")
    show(await refusal(URL))

    step("A wrong key: 401")
    show(f"$ websocat {URL} -H 'apikey: wrong'")
    show(await refusal(URL, {"apikey": "wrong"}))

    step("John's key in the apikey header: upgraded; greeting, then echo")
    show(f"$ websocat {URL} -H 'apikey: john-key'")
    ws = await try_connect(URL, headers={"apikey": "john-key"})
    show(f"< {(await ws.receive()).data}")
    await ws.send_str("hello")
    show("> hello")
    show(f"< {(await ws.receive()).data}")
    await close(ws)

    step("Repeated connections are served by both upstreams in turn (round robin)")
    for _ in range(4):
        ws = await try_connect(URL, headers={"apikey": "john-key"})
        show(f"< {(await ws.receive()).data}")
        await close(ws)

    step("The key as a query parameter")
    show(f"$ websocat '{URL}?apikey=john-key'")
    ws = await try_connect(URL + "?apikey=john-key")
    show(f"< {(await ws.receive()).data}")
    await close(ws)

    step("The key as a subprotocol entry: what a browser can send")
    entry = encode_key_subprotocol("john-key")
    show(f"new WebSocket('{URL}', ['{entry}'])")
    ws = await try_connect(URL, protocols=[entry])
    show(f"< {(await ws.receive()).data}")
    show(f"selected subprotocol: {ws.protocol} (one the client offered, as browsers require)")
    await close(ws)

    step("A plain HTTP GET on the WebSocket route: 426")
    async with aiohttp.ClientSession() as http, http.get(f"http://{PROXY}/.ws") as response:
        show(f"$ curl -i http://{PROXY}/.ws  ->  HTTP {response.status} {response.reason}")

    step("A path no route matches: 404")
    show(await refusal(f"ws://{PROXY}/elsewhere", {"apikey": "john-key"}))
    print("\nDone. The manifests are in examples/quickstart/; `wsgate compile "
          "examples/quickstart` prints what the proxy runs.")


def busy_ports() -> list[str]:
    busy = []
    for port, what in PORTS.items():
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(f"127.0.0.1:{port} ({what})")
    return busy


def main() -> int:
    if busy := busy_ports():
        print("wsgate demo: these ports are in use: " + ", ".join(busy)
              + "\nStop what listens there (another demo?) and run `make demo` again.")
        return 1
    with ExitStack() as stack:
        step("Starting two echo upstreams and the proxy (standalone mode)")
        for port, name in ((9001, "a"), (9002, "b")):
            stack.enter_context(WsgateProcess("echo", "--listen", f"127.0.0.1:{port}",
                                              "--id", name))
            show(f"wsgate echo --listen 127.0.0.1:{port} --id {name}")
        proxy = stack.enter_context(WsgateProcess(
            "proxy", "--listen", PROXY, "--admin-listen", "127.0.0.1:9901",
            "--manifests", str(HERE)))
        record = proxy.wait_for_log(lambda r: r.get("event") == "config applied")
        shown = HERE.relative_to(Path.cwd()) if HERE.is_relative_to(Path.cwd()) else HERE
        show(f"wsgate proxy --listen {PROXY} --admin-listen 127.0.0.1:9901 --manifests {shown}")
        show(f"config {record['version']} applied: {record['routes']} route, "
             f"{record['consumers']} consumer")
        try:
            asyncio.run(walk_through())
        except KeyboardInterrupt:
            print("\ninterrupted")
        step("Stopping what the demo started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
