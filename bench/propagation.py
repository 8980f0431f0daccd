"""How fast a change in the API reaches the data plane, and what compiling costs.

  - propagation: with R routes and C consumers loaded into the API emulator, the real
    operator and a real proxy, the time from an API write (a key rotated, a consumer
    deleted) to the proxy enforcing it (a handshake with the old key refused), over W
    writes each: p50 / p99 / max;
  - compile time against object count: C consumers (each a Secret and a WsConsumer)
    and R routes, for C in 1k, 10k, 50k.
Prints tables, writes bench/results/propagation.json and (with matplotlib) .png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import kmock

from bench.common import RESULTS, run_main, table, write_results
from tests.kube.emulator import ApiServer
from tests.kube.operator import OperatorThread, write_kubeconfig
from tests.operator.conftest import PROXY_LABELS, PROXY_NAMESPACE, shared_admin_port
from tests.support import TOKEN, consumer_objects, endpoint_slice, quickstart_objects, route_of
from wsgate.processes import WsgateProcess
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_operator.options import OperatorOptions


def cluster_objects(routes: int, consumers: int, upstream_port: int) -> list[dict]:
    base = [o for o in quickstart_objects(1, 2) if o["kind"] in ("Service", "WsRoute")]
    template = route_of(base)
    objects = [o for o in base if o["kind"] == "Service"]
    objects.append(endpoint_slice("echo", "echo", "127.0.0.1", upstream_port))
    for i in range(routes):
        objects.append({**template, "metadata": {"name": f"route-{i}"},
                        "spec": {**template["spec"], "paths": [{"value": f"/r{i}"}]}})
    for i in range(consumers):
        objects += consumer_objects(f"user-{i}", f"key-{i}")
    return objects


def compile_times(routes: int, sizes: list[int], rounds: int = 3) -> dict[int, float]:
    results = {}
    for consumers in sizes:
        snapshot = Snapshot.of(cluster_objects(routes, consumers, 1))
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            compile_snapshot(snapshot)
            samples.append(time.perf_counter() - start)
        results[consumers] = statistics.median(samples)
        print(f"  compiled {routes} routes + {consumers} consumers: {results[consumers]:.2f}s")
    return results


async def handshake_status(http: aiohttp.ClientSession, url: str, key: str) -> int:
    try:
        async with http.ws_connect(url, headers={"apikey": key}):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def until_status(http: aiohttp.ClientSession, url: str, key: str, status: int,
                       interval: float = 0.005) -> None:
    """Poll handshakes until one is answered with ``status`` (the measurement itself)."""
    while await handshake_status(http, url, key) != status:  # noqa: ASYNC110
        await asyncio.sleep(interval)


async def propagation(args: argparse.Namespace) -> dict[str, list[float]]:
    api = ApiServer()
    api.add_crds()
    echo = WsgateProcess("echo", "--listen", "127.0.0.1:0").start()
    address = "127.0.0.2"
    port = shared_admin_port([address])
    proxy = WsgateProcess("proxy", "--listen", "127.0.0.1:0", "--admin-listen",
                          f"{address}:{port}", env={"WSGATE_ADMIN_TOKEN": TOKEN}).start()
    results: dict[str, list[float]] = {"key rotated": [], "consumer deleted": []}
    try:
        async with api, kmock.Server(api) as server:
            kubeconfig = write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig",
                                          str(server.url).rstrip("/"))
            os.environ["KUBECONFIG"] = str(kubeconfig)
            for obj in cluster_objects(args.routes, args.consumers, echo.port):
                api.store.create(api.kind(obj["apiVersion"], obj["kind"]),
                                 obj["metadata"].get("namespace", "default"), obj)
            api.apply({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "proxy", "namespace": PROXY_NAMESPACE,
                                    "labels": PROXY_LABELS},
                       "status": {"phase": "Running", "podIP": address}})
            options = OperatorOptions(proxy_selector=dict(PROXY_LABELS),
                                      proxy_namespace=PROXY_NAMESPACE, proxy_admin_port=port,
                                      admin_token=TOKEN)
            url = f"ws://127.0.0.1:{proxy.port}/r0"
            # No asyncio debug mode (the tests' guard): it would slow what is measured.
            async with OperatorThread(options, debug=False), aiohttp.ClientSession() as http:
                started = time.perf_counter()
                await until_status(http, url, "key-0", 101, interval=0.1)
                print(f"  initial sync of {args.routes} routes and {args.consumers} consumers: "
                      f"{time.perf_counter() - started:.1f}s")
                for i in range(1, args.writes + 1):
                    secret = api.get("v1", "Secret", f"user-{i}-key")
                    secret["data"]["key"] = base64.b64encode(f"new-{i}".encode()).decode()
                    written = time.perf_counter()
                    api.apply(secret)
                    await until_status(http, url, f"key-{i}", 401)
                    results["key rotated"].append(time.perf_counter() - written)
                for i in range(args.writes + 1, 2 * args.writes + 1):
                    written = time.perf_counter()
                    api.delete("wsgate.io/v1alpha1", "WsConsumer", f"user-{i}")
                    await until_status(http, url, f"key-{i}", 401)
                    results["consumer deleted"].append(time.perf_counter() - written)
    finally:
        proxy.stop()
        echo.stop()
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def run(args: argparse.Namespace) -> None:
    print(f"\npropagation: {args.routes} routes, {args.consumers} consumers, "
          f"{args.writes} writes of each kind")
    delays = await propagation(args)
    print("\ncompile time against consumers (plus the routes)")
    compiles = compile_times(args.routes, args.sizes)

    rows = [["write", "p50 ms", "p99 ms", "max ms"]]
    for name, values in delays.items():
        rows.append([name, f"{statistics.median(values) * 1000:.0f}",
                     f"{percentile(values, 0.99) * 1000:.0f}", f"{max(values) * 1000:.0f}"])
    print("\nAPI write -> the proxy refuses the old credential\n")
    print(table(rows))
    rows = [["consumers", "routes", "compile s"]]
    rows += [[f"{n:,}", f"{args.routes:,}", f"{t:.2f}"] for n, t in compiles.items()]
    print("\n" + table(rows))
    out = write_results("propagation", {"args": vars(args), "delays_s": delays,
                                        "compile_s": compiles})
    print(f"\nwrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].boxplot([[v * 1000 for v in vs] for vs in delays.values()],
                    tick_labels=list(delays))
    axes[0].set_title("API write to enforcement (ms)")
    axes[1].plot(list(compiles), list(compiles.values()), marker="o")
    axes[1].set_xlabel("consumers")
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"compile time ({args.routes} routes)")
    fig.tight_layout()
    fig.savefig(RESULTS / "propagation.png", dpi=100)
    print(f"wrote {RESULTS / 'propagation.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--consumers", type=int, default=10_000)
    parser.add_argument("--writes", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    run_main(run, parser)


if __name__ == "__main__":
    main()
