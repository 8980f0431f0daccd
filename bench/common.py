"""Shared pieces of the benchmarks: manifests, a handshake load, result files, tables."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "john-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_service(echo_port: int) -> list[dict[str, Any]]:
    """Service echo (port 8080) and its one endpoint, 127.0.0.1:echo_port."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
         "spec": {"ports": [{"name": "ws", "port": 8080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "echo", "labels": {"kubernetes.io/service-name": "echo"}},
         "addressType": "IPv4", "ports": [{"name": "ws", "port": echo_port}],
         "endpoints": [{"addresses": ["127.0.0.1"]}]},
    ]


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
