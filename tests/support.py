"""What the test tiers share: manifests from the quickstart, upstreams, polling."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples" / "quickstart"
TOKEN = "test-admin-token"
KEY = {"apikey": "john-key"}


def copy_quickstart(target: Path, port_a: int, port_b: int) -> Path:
    """The quickstart manifests, verbatim but for the echo upstreams' ports."""
    target.mkdir(parents=True, exist_ok=True)
    for source in QUICKSTART.glob("*.yaml"):
        text = _with_ports(source.read_text(), port_a, port_b)
        (target / source.name).write_text(text)
    return target


def _with_ports(text: str, port_a: int, port_b: int) -> str:
    return text.replace("port: 9001", f"port: {port_a}").replace("port: 9002", f"port: {port_b}")


def quickstart_objects(port_a: int, port_b: int) -> list[dict[str, Any]]:
    objects = []
    for source in sorted(QUICKSTART.glob("*.yaml")):
        text = _with_ports(source.read_text(), port_a, port_b)
        objects += [d for d in yaml.safe_load_all(text) if d]
    return objects


def objects_for(*ports: int) -> list[dict[str, Any]]:
    """The quickstart, with its EndpointSlices replaced by these local ports."""
    base = [o for o in quickstart_objects(1, 2) if o["kind"] != "EndpointSlice"]
    return base + [endpoint_slice(f"s{p}", "echo", "127.0.0.1", p) for p in ports]


def route_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The (first) WsRoute among the objects."""
    return next(o for o in objects if o["kind"] == "WsRoute")


def write_manifests(directory: Path, name: str, objects: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(objects))
    shutil.move(tmp, path)  # a rename: the watcher never sees half a file
    return path


def route(name: str, path: str, auth: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A WsRoute onto the quickstart's echo Service."""
    return {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
            "metadata": {"name": name},
            "spec": {"paths": [{"type": "Prefix", "value": path}],
                     "backend": {"service": {"name": "echo", "port": 8080}},
                     "auth": auth, **spec}}


def endpoint_slice(name: str, service: str, address: str, port: int,
                   port_name: str = "ws") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
    }


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     interval: float = 0.05) -> Any:
    """Retry ``check`` until it returns without raising, or re-raise at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


def _echo_if_offered(_connection: ServerConnection, offered: list[str]) -> str | None:
    return "echo" if "echo" in offered else None


class RecordingUpstream:
    """An independent upstream (the `websockets` library's server) that records each
    handshake and echoes, except: 'close:<code>' makes it close with that code, and
    'flood:<n>' makes it send n MiB in 64 KiB messages."""

    def __init__(self, ssl: Any = None) -> None:
        self.requests: list[Any] = []
        self.close_codes: list[int | None] = []
        self._server: Any = None
        self._ssl = ssl

    async def _handler(self, ws: ServerConnection) -> None:
        self.requests.append(ws.request)
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    await ws.close(int(message.split(":")[1]), "upstream says bye")
                    break
                if isinstance(message, str) and message.startswith("flood:"):
                    chunk = os.urandom(65536)  # incompressible: deflate may be on
                    for _ in range(int(message.split(":")[1]) * 16):
                        await ws.send(chunk)  # waits while the proxy applies backpressure
                    continue
                await ws.send(message)
        except ConnectionClosed:
            pass  # a close code other than 1000/1001: recorded below
        await ws.wait_closed()
        self.close_codes.append(ws.close_code)

    async def __aenter__(self) -> RecordingUpstream:
        # A backlog that holds a storm of the proxy's dials (tests/component/test_storm.py).
        self._server = await serve(self._handler, "127.0.0.1", 0, max_size=None,
                                   select_subprotocol=_echo_if_offered, ssl=self._ssl,
                                   backlog=1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]


def compile_objects(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The config the compiler makes of these objects, as JSON for PUT /config."""
    from wsgate_operator.compiler import Snapshot, compile_snapshot

    return compile_snapshot(Snapshot.of(objects)).config.model_dump(mode="json")


def consumer_objects(name: str, key: str, labels: dict[str, str] | None = None
                     ) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{name}-key", "labels": {"wsgate.io/credential": "true"}},
         "stringData": {"key": key}},
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsConsumer",
         "metadata": {"name": name, "labels": labels or {}},
         "spec": {"credentials": [{"type": "KeyAuth", "secretRef": {"name": f"{name}-key"}}]}},
    ]


class Admin:
    """The proxy's admin API, through aiohttp's client."""

    def __init__(self, port: int, token: str | None = TOKEN, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{port}"
        self.token = token

    def _headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(self, method: str, path: str, *, json: Any = None,
                      token: str | None = "default") -> tuple[int, Any]:
        import aiohttp

        token = self.token if token == "default" else token
        async with aiohttp.ClientSession() as http, http.request(
            method, self.base + path, json=json, headers=self._headers(token)
        ) as response:
            body = await (response.json() if response.content_type == "application/json"
                          else response.text())
            return response.status, body

    async def put_config(self, config: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
        return await self.request("PUT", "/config", json=config, **kwargs)

    async def metrics(self) -> str:
        _, text = await self.request("GET", "/metrics")
        return text


def metric_value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def receive_until_closed(ws: Any, into: list[Any] | None = None) -> None:
    """Receive (into a list, if given) until the connection closes: ConnectionClosed."""
    while True:
        message = await ws.recv()
        if into is not None:
            into.append(message)


def credential_objects(name: str, kind: str, data: dict[str, str],
                       labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A Secret and a WsConsumer holding one credential of ``kind``."""
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{name}-{kind.lower()}",
                      "labels": {"wsgate.io/credential": "true"}},
         "stringData": data},
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsConsumer",
         "metadata": {"name": name, "labels": labels or {}},
         "spec": {"credentials": [{"type": kind,
                                   "secretRef": {"name": f"{name}-{kind.lower()}"}}]}},
    ]


# --- adversity: what the adversarial tier and the robustness tests share ------------


def rss_kib(pid: int) -> int:
    """A process's resident memory, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


class MemoryPeak:
    """Samples a process's resident memory every 20 ms while in use: ``grown_kib`` is the
    peak above what it held on entry."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.02)

    @property
    def grown_kib(self) -> int:
        return self.peak - self.start

    async def __aenter__(self) -> MemoryPeak:
        self.start = self.peak = rss_kib(self.pid)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_kib(self.pid))


class Bystander:
    """A well-behaved client elsewhere: while in use, it keeps doing a whole handshake
    and an echo round trip, one after another, and records the slowest (``worst``)
    and every failure. The attack tests assert it was served promptly throughout.

    It runs on a thread with an event loop of its own, so that the attack's own work
    in the test process does not count as the proxy's delay."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 timeout: float = 5.0) -> None:
        self.url = url
        self.headers = headers if headers is not None else KEY
        self.timeout = timeout
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started: float | None = None

    async def _once(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, additional_headers=self.headers,
                           open_timeout=self.timeout) as ws:
            await ws.send("bystander")
            while await ws.recv() != "bystander":  # a greeting may come first
                pass

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._started = time.monotonic()
            try:
                await asyncio.wait_for(self._once(), self.timeout)
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.times.append(time.monotonic() - self._started)
            self._started = None
            await asyncio.sleep(0.05)

    @property
    def worst(self) -> float:
        return max(self.times, default=float("inf"))

    def assert_served(self, within: float = 1.5) -> None:
        assert not self.failures, f"a well-behaved client failed: {self.failures[:3]}"
        assert self.times, "the well-behaved client never completed a round"
        assert self.worst < within, (
            f"a well-behaved client waited {self.worst:.2f}s for a handshake and an echo")

    async def __aenter__(self) -> Bystander:
        await self._once()  # served before the attack starts
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._thread is not None
        self._stop.set()
        started = self._started
        if started is not None:  # a round still under way counts as long as it took so far
            self.times.append(time.monotonic() - started)
        await asyncio.to_thread(self._thread.join, self.timeout + 1)


def handshake_head(path: str = "/.ws", host: str = "h", *extra: str,
                   version: str = "1.1") -> bytes:
    """A raw WebSocket handshake request head (without the blank line when ``extra``
    ends with ``...``)."""
    lines = [f"GET {path} HTTP/{version}", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes; return the HTTP answer's head and body (by Content-Length), or what
    came before the proxy closed or ``timeout`` passed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep and (b" 101 " in head.split(b"\r\n")[0] or len(body) >= _length(head)):
                    break
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return received


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer."""
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer[9:12])


class RawUpstream:
    """A hostile or broken upstream on a raw socket: ``handler(reader, writer, key, head)``
    is called with each connection once its request head is read (``key`` is the
    request's Sec-WebSocket-Key). Counts connections and how many are still open."""

    def __init__(self, handler: Callable[..., Awaitable[None]]) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            key = next((line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"sec-websocket-key:")), "")
            await self.handler(reader, writer, key, head)
            await reader.read()  # until the proxy closes its side
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]


def switching(key: str, *extra: str) -> bytes:
    """An upstream's 101 answer to ``key``."""
    from wsgate_proxy.upstream import accept_for

    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_for(key)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
