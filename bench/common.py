"""Shared pieces of the benchmarks: the paths under test, load clients, result files."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from wsgate.processes import WsgateProcess

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "john-key"


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the process in the middle, for memory figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifests(directory: Path, echo_port: int) -> Path:
    """The quickstart route and consumer, with one echo endpoint."""
    quickstart = Path(__file__).resolve().parent.parent / "examples" / "quickstart"
    directory.mkdir(parents=True, exist_ok=True)
    for source in quickstart.glob("*.yaml"):
        text = source.read_text().replace("port: 9001", f"port: {echo_port}")
        if source.name == "backend.yaml":
            text = text.split("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                              "metadata:\n  name: echo-b")[0]
        (directory / source.name).write_text(text)
    return directory


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_apikey $key_ok {{ "{key}" 1; default 0; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($key_ok = 0) {{ return 401; }}
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(stack: ExitStack, upstream_port: int) -> Target | None:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                       else None)
    if binary is None:
        return None
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-nginx-")))
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, key=KEY, port=port, upstream=upstream_port))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    _wait_port(port)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    name = f"nginx ({version.split('/')[-1]})"
    return Target(name, f"ws://127.0.0.1:{port}/.ws", _worker(proc.pid))


def _worker(master: int) -> int:
    """nginx's single worker process, where the sessions live."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children")
        if children.exists() and (pids := children.read_text().split()):
            return int(pids[0])
        time.sleep(0.05)
    return master


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def start_paths(stack: ExitStack, with_nginx: bool = True) -> list[Target]:
    """wsgate echo (direct), through wsgate proxy, and through nginx where installed."""
    echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "e"))
    echo_port = echo.port
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-bench-")))
    proxy = stack.enter_context(WsgateProcess(
        "proxy", "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--manifests", str(manifests(tmp, echo_port))))
    paths = [
        Target("direct", f"ws://127.0.0.1:{echo_port}/.ws", None),
        Target("wsgate", f"ws://127.0.0.1:{proxy.port}/.ws", proxy.proc.pid),
    ]
    if with_nginx and (nginx := start_nginx(stack, echo_port)):
        paths.append(nginx)
    return paths


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class EchoResult:
    path: str
    connections: int
    round_trips: int
    size: int
    seconds: float
    msgs_per_s: float
    p50_ms: float
    p99_ms: float


async def echo_load(path: Target, connections: int, round_trips: int, size: int) -> EchoResult:
    payload = os.urandom(size)
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(path.url, headers={"apikey": KEY}, compress=0,
                                         max_msg_size=0) for _ in range(connections)]
        for ws in sockets:
            await ws.receive()  # the greeting

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            for _ in range(round_trips):
                start = time.perf_counter()
                await ws.send_bytes(payload)
                await ws.receive()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(ws) for ws in sockets))
        seconds = time.perf_counter() - start
        for ws in sockets:
            await ws.close()
    latencies.sort()
    return EchoResult(
        path.name, connections, round_trips, size, round(seconds, 3),
        round(len(latencies) / seconds), round(statistics.median(latencies) * 1000, 3),
        round(latencies[int(len(latencies) * 0.99)] * 1000, 3))


async def handshakes(url: str, headers: dict[str, str], total: int, concurrency: int) -> float:
    """Handshakes per second: ``total`` of them (upgrade, greeting, close), so many at a time."""
    async with aiohttp.ClientSession() as http:
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with http.ws_connect(url, headers=headers) as ws:
                    await ws.receive()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def run_main(main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
             parser: argparse.ArgumentParser) -> None:
    """Parse the arguments and run the benchmark on uvloop, where it is installed."""
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "machine": {"cpus": os.cpu_count(),
                                            "python": platform.python_version()}, **data}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2, default=lambda o: asdict(o)))
    return out


def table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
