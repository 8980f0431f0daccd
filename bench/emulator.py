"""The API emulator (tests/kube) in a process of its own, for the benchmarks.

In the benchmark's own process it would share one interpreter lock with everything
the benchmark measures; here it has a process, as an API server has. It creates the
world (bench/world.py) and the proxy pods in its store, then serves over HTTP on
127.0.0.1 and prints ``{"url": ...}`` on stdout; SIGTERM stops it.

    python -m bench.emulator --routes R --consumers C --echo-port P --pod NAME=IP ...
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import subprocess
import sys
import time
from typing import Any

import kmock

from bench import world
from tests.kube.emulator import ApiServer

PROXY_NAMESPACE = "wsgate-system"
PROXY_LABELS = {"app.kubernetes.io/name": "wsgate-proxy"}


def pod(name: str, address: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": PROXY_NAMESPACE, "labels": PROXY_LABELS},
            "spec": {"containers": [{"name": "proxy", "image": "wsgate:dev"}]},
            "status": {"phase": "Running", "podIP": address,
                       "containerStatuses": [{"name": "proxy", "image": "wsgate:dev",
                                              "imageID": "", "ready": True,
                                              "restartCount": 0}]}}


async def serve(args: argparse.Namespace) -> None:
    api = ApiServer()
    api.add_crds()
    started = time.perf_counter()
    for obj in world.objects(args.routes, args.consumers, args.echo_port):
        kind = api.kind(obj["apiVersion"], obj["kind"])
        api.store.create(kind, obj["metadata"].get("namespace", "default"), obj)
    for spec in args.pod:
        name, _, address = spec.partition("=")
        api.apply(pod(name, address))
    # The seeded world lives until the end: out of the collector's sight, so that the
    # emulator's full collections (hundreds of thousands of objects) do not hold the
    # core it shares with the operator and the proxies it serves during the measure.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with api, kmock.Server(api) as server:
        print(json.dumps({"url": str(server.url).rstrip("/"),
                          "objects": len(api.store.objects),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
        await stop.wait()


class Emulator:
    """The emulator as a child process of the benchmark."""

    def __init__(self, routes: int, consumers: int, echo_port: int,
                 pods: dict[str, str]) -> None:
        self.args = [sys.executable, "-m", "bench.emulator", "--routes", str(routes),
                     "--consumers", str(consumers), "--echo-port", str(echo_port)]
        for name, address in pods.items():
            self.args += ["--pod", f"{name}={address}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 1800) -> Emulator:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        info = json.loads(line)
        self.url = info["url"]
        print(f"  emulator: {info['objects']} objects created in {info['seconds']}s")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, required=True)
    parser.add_argument("--consumers", type=int, required=True)
    parser.add_argument("--echo-port", type=int, required=True)
    parser.add_argument("--pod", action="append", default=[], metavar="NAME=IP")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
