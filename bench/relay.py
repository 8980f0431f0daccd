"""The data path: wsgate against a direct connection and nginx, in one run.

For each path (direct to a `wsgate echo`, through `wsgate proxy`, through nginx with
the same key check where nginx is installed):
  - echo load: N connections each doing M round trips of S bytes: msgs/s, p50, p99
  - handshakes: H authenticated handshakes, C at a time: handshakes/s
  - idle sessions: K open sessions: resident memory of the middle process per session
Prints tables with ratios to direct, writes bench/results/relay.json and, with
matplotlib installed (`pip install -e '.[bench]'`), bench/results/relay.png.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import ExitStack

import aiohttp

from bench.common import (
    KEY,
    RESULTS,
    Target,
    echo_load,
    handshakes,
    rss_kib,
    run_main,
    start_paths,
    table,
    write_results,
)


async def idle_memory(target: Target, sessions: int) -> float | None:
    if target.pid is None:
        return None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        before = rss_kib(target.pid)
        opened = [await http.ws_connect(target.url, headers={"apikey": KEY})
                  for _ in range(sessions)]
        await asyncio.sleep(0.5)  # let the middle process settle before reading its memory
        after = rss_kib(target.pid)
        for ws in opened:
            await ws.close()
    return (after - before) / sessions


async def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        targets = start_paths(stack, with_nginx=not args.no_nginx)
        echo, shakes, memory = [], {}, {}
        for target in targets:
            await echo_load(target, 5, 50, args.size)  # warm up
            echo.append(await echo_load(target, args.connections, args.round_trips, args.size))
            shakes[target.name] = await handshakes(target.url, {"apikey": KEY}, args.handshakes,
                                                   args.concurrency)
            memory[target.name] = await idle_memory(target, args.idle)

    direct = echo[0]
    print(f"\necho: {args.connections} connections x {args.round_trips} round trips of "
          f"{args.size} bytes (client, proxy and upstream share this machine's cores)\n")
    rows = [["path", "msgs/s", "p50 ms", "p99 ms", "msgs/s vs direct", "p50 vs direct"]]
    for r in echo:
        rows.append([r.path, f"{r.msgs_per_s:,.0f}", f"{r.p50_ms:.3f}", f"{r.p99_ms:.3f}",
                     f"{r.msgs_per_s / direct.msgs_per_s:.2f}", f"{r.p50_ms / direct.p50_ms:.2f}"])
    print(table(rows))
    print(f"\nhandshakes: {args.handshakes}, {args.concurrency} at a time, with the key check\n")
    rows = [["path", "handshakes/s", "vs direct"]]
    for name, rate in shakes.items():
        rows.append([name, f"{rate:,.0f}", f"{rate / shakes[direct.path]:.2f}"])
    print(table(rows))
    print(f"\nidle sessions: {args.idle} open, resident memory of the middle process\n")
    rows = [["path", "KiB per session"]]
    rows += [[name, f"{kib:.1f}"] for name, kib in memory.items() if kib is not None]
    print(table(rows))

    out = write_results("relay", {"args": vars(args), "echo": echo, "handshakes_per_s": shakes,
                                  "idle_kib_per_session": memory})
    print(f"\nwrote {out}")
    plot(echo, shakes)


def plot(echo: list, shakes: dict[str, float]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install -e '.[bench]')")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = [r.path for r in echo]
    axes[0].bar(names, [r.msgs_per_s for r in echo], color="tab:blue")
    axes[0].set_title("echo msgs/s (higher is better)")
    axes[1].bar(names, [r.p50_ms for r in echo], label="p50", color="tab:green")
    axes[1].bar(names, [r.p99_ms - r.p50_ms for r in echo], bottom=[r.p50_ms for r in echo],
                label="p99", color="tab:orange")
    axes[1].set_title("round-trip latency ms (lower is better)")
    axes[1].legend()
    axes[2].bar(list(shakes), list(shakes.values()), color="tab:purple")
    axes[2].set_title("handshakes/s (higher is better)")
    fig.tight_layout()
    out = RESULTS / "relay.png"
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--no-nginx", action="store_true")
    run_main(run, parser)


if __name__ == "__main__":
    main()
