"""What a shared limits store costs a handshake: wsgate with the route's connection limits
counted in Redis (`--limits-redis-url`, one round trip per handshake) against the same
wsgate counting them itself, in one run, interleaved (A, B, B, A, ...), with a direct
connection to the upstream for scale.

Both proxies serve the quickstart route with `maxConnections` and
`maxConnectionsPerConsumer` set (high enough never to refuse), so every handshake is
checked; the store is a local `redis-server` (Debian's package). Prints handshakes/s per
round and the median of the rounds' ratios, writes bench/results/limits.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.common import KEY, handshakes, manifests, run_main, table, write_results
from tests.redis_server import RedisServer
from wsgate.processes import WsgateProcess

LIMITS = """  limits:
    maxConnections: 1000000
    maxConnectionsPerConsumer: 1000000
"""


def limited_manifests(directory: Path, echo_port: int) -> Path:
    manifests(directory, echo_port)
    route = directory / "route.yaml"
    route.write_text(route.read_text().replace("spec:\n", "spec:\n" + LIMITS, 1))
    return directory


async def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0", "--id", "e"))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-bench-")))
        directory = limited_manifests(tmp, echo.port)
        redis_server = stack.enter_context(RedisServer())
        common = ("proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                  "--manifests", str(directory))
        shared = stack.enter_context(WsgateProcess(
            *common, "--limits-redis-url", redis_server.url, name="proxy (shared)"))
        alone = stack.enter_context(WsgateProcess(*common, name="proxy (per proxy)"))
        paths = {
            "direct": f"ws://127.0.0.1:{echo.port}/.ws",
            "wsgate, limits in Redis": f"ws://127.0.0.1:{shared.port}/.ws",
            "wsgate, limits per proxy": f"ws://127.0.0.1:{alone.port}/.ws",
        }
        headers = {"apikey": KEY}
        for url in paths.values():  # warm up
            await handshakes(url, headers, 200, args.concurrency)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        order = list(paths)
        for _ in range(args.rounds):
            for name in order:
                rates[name].append(await handshakes(paths[name], headers, args.handshakes,
                                                    args.concurrency))
            order.reverse()  # interleaved: neither side always runs first

    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"\nhandshakes on a route with connection limits: {args.rounds} rounds of "
          f"{args.handshakes}, {args.concurrency} at a time, interleaved\n")
    rows = [["path", "median handshakes/s", "rounds", "vs per proxy"]]
    for name, values in rates.items():
        rows.append([name, f"{medians[name]:,.0f}", " ".join(f"{v:,.0f}" for v in values),
                     f"{medians[name] / medians['wsgate, limits per proxy']:.2f}"])
    print(table(rows))
    # Each round's pair ran back to back: their ratio drifts less with the machine's load.
    pairs = [a / b for a, b in zip(rates["wsgate, limits in Redis"],
                                   rates["wsgate, limits per proxy"], strict=True)]
    ratio = statistics.median(pairs)
    print(f"\nwith the store / without it, median of the rounds' ratios: {ratio:.2f} "
          f"(rounds: {' '.join(f'{r:.2f}' for r in pairs)})")
    out = write_results("limits", {"args": vars(args), "handshakes_per_s": rates,
                                   "medians": medians, "round_ratios": pairs,
                                   "ratio": ratio})
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=12)
    run_main(run, parser)


if __name__ == "__main__":
    main()
