"""How fast a change reaches every proxy, and what live sessions feel meanwhile.

For 1k routes with 1k, 10k and 50k consumers (each consumer a WsConsumer with its own
KeyAuth Secret), in operator mode and in standalone mode, with two proxies each:

  - start-up: from the operator's (or the standalone proxies') start to every proxy
    serving the whole set (the last consumer's key accepted on the last route);
  - write -> enforced: a key rotated in its Secret (the old key refused and the new
    one accepted on every proxy) and a consumer deleted (its key refused everywhere),
    polled every 20 ms: p50 / p99 / max;
  - the live sessions' round trips: 20 sessions (10 per proxy) pinging every 10 ms,
    before the writes and while they land: p99 / max;
  - operator restart after a change made while it was down: time to enforced, the
    longest round trip meanwhile, and the bytes the restarted operator pushed, as deltas
    and as whole configs (each proxy runs a version the new operator never built: it
    lists what it runs, GET /config/digests, and gets what differs);
  - bytes pushed per change (the operator's wsgate_operator_push_bytes_total), and
    the proxies' memory per consumer (RSS over that of a proxy without config);
  - standalone: a whole config (every consumer's key changed but the live sessions')
    pushed to both proxies at once with sessions live: time to applied, the longest
    round trip meanwhile; and GET /metrics with every route holding series (one
    session through each route first): render time, series, round trips meanwhile.

Everything runs as its own process on this machine: the API emulator (tests/kube, in
a process of its own: in the benchmark's process it would share one interpreter lock
with what is measured), the operator (`wsgate operator`), the proxies, the echo
upstream; this process only holds the clients. Prints tables, writes
bench/results/propagation.json and (with matplotlib) propagation.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, ExitStack, nullcontext
from pathlib import Path
from typing import Any

import aiohttp

from bench import spy, world
from bench.common import RESULTS, run_main, table, write_results
from bench.emulator import PROXY_LABELS, PROXY_NAMESPACE, Emulator
from bench.paths import rss_kib
from tests.kube.operator import write_kubeconfig
from tests.operator.conftest import shared_admin_port
from tests.support import TOKEN
from wsgate.processes import WsgateProcess
from wsgate_operator.manifests import compile_directory
from wsgate_proxy import config_stream

PROXY_ADDRESSES = ["127.0.0.2", "127.0.0.3"]
SESSIONS = 20
PING_SECONDS = 0.01
# A round trip slower than this is listed with when it was sent (the bound).
SLOW_SECONDS = 0.02
POLL_SECONDS = 0.02
CR = world.CR
REPOSITORY = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values) * 1000, 1) if values else float("nan"),
            "p99": round(percentile(values, 0.99) * 1000, 1),
            "max": round(max(values) * 1000, 1) if values else float("nan"),
            "count": len(values)}


def each_ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 1) for v in values]


# -- clients ---------------------------------------------------------------------------


async def handshake_status(http: aiohttp.ClientSession, url: str, key: str) -> int:
    try:
        async with http.ws_connect(url, headers={"apikey": key}, timeout=aiohttp.ClientWSTimeout(
                ws_close=2)):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0


async def until(check: Callable[[], Awaitable[bool]], limit: float,
                interval: float = POLL_SECONDS) -> float:
    """Seconds until ``check`` holds, polled every ``interval`` (raises at the timeout)."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > limit:
            raise TimeoutError(f"not reached within {limit:.0f}s")
        await asyncio.sleep(interval)
    return time.perf_counter() - started


def enforced(http: aiohttp.ClientSession, urls: list[str],
             expect: dict[str, int]) -> Callable[[], Awaitable[bool]]:
    """A check: every proxy answers each key with its expected status."""
    async def check() -> bool:
        answers = await asyncio.gather(*(handshake_status(http, url, key)
                                         for url in urls for key in expect))
        wanted = [expect[key] for _url in urls for key in expect]
        return answers == wanted
    return check


class Pingers:
    """Live sessions pinging through the proxies from a process of their own
    (bench/pingers.py), so this process's own stalls never count as round trips; every
    round trip recorded with when it was sent and through which proxy."""

    def __init__(self, urls: list[str], keys: list[str]) -> None:
        self.sessions = [[i % len(urls), urls[i % len(urls)], key]
                         for i, key in enumerate(keys)]
        self.samples: list[tuple[float, float, int]] = []
        self.failures = 0
        self.longest_loop_gap = 0.0
        self.slow: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Pingers:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.pingers", "--interval", str(PING_SECONDS),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=REPOSITORY)
        assert self._process.stdin
        assert self._process.stdout
        self._process.stdin.write(json.dumps(self.sessions).encode() + b"\n")
        if await self._process.stdout.readline() != b"ready\n":
            self._process.kill()
            await self._process.wait()
            raise RuntimeError("the pingers' process did not open its sessions: "
                               "see its error output above")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process
        assert self._process.stdin
        self._process.stdin.close()
        out, _ = await self._process.communicate()
        found = json.loads(out)
        self.samples = [(sent, rtt, proxy) for sent, rtt, proxy in found["samples"]]
        self.failures = found["failures"]
        self.longest_loop_gap = found["longest_loop_gap"]

    def phase(self, name: str, start: float, end: float) -> dict[str, float]:
        """The round trips of the pings sent between ``start`` and ``end``; each one
        slower than SLOW_SECONDS kept (``self.slow``) with when it was sent, from the
        phase's start, to line it up with what happened then."""
        rtts = []
        for sent, rtt, proxy in self.samples:
            if start <= sent <= end:
                rtts.append(rtt)
                if rtt > SLOW_SECONDS:
                    self.slow.append({"phase": name, "at_s": round(sent - start, 3),
                                      "sent": sent, "rtt_ms": round(rtt * 1000, 1),
                                      "proxy": proxy})
        return summary_ms(rtts)


def pinger_figures(pingers: Pingers, recording: spy.Recording | None) -> dict[str, Any]:
    """What the pingers' process found besides the phases' round trips; its longest loop
    gap bounds how much of any round trip was its own stall. With a recording (--spy),
    each slow round trip is given what its proxy's threads ran meanwhile."""
    for slow in pingers.slow:
        print(f"  slow round trip: {slow['rtt_ms']} ms through proxy-{slow['proxy']}, "
              f"{slow['phase']} +{slow['at_s']}s")
        trace = recording.traces[slow["proxy"]] if recording is not None else None
        if trace is not None:
            slow["proxy_held"] = spy.described(trace.held(
                slow["sent"], slow["sent"] + slow["rtt_ms"] / 1000))
            for thread, frames in slow["proxy_held"].items():
                print(f"    thread {thread}: {frames}")
    found: dict[str, Any] = {}
    if recording is not None:
        # To line the traces up with the samples' send times afterwards (spy.Trace).
        found["spy_traces"] = [{"path": str(path), "launched": launched}
                               for path, launched in recording.recorded]
    return found | {"ping_failures": pingers.failures,
                    "pinger_loop_gap_ms": round(pingers.longest_loop_gap * 1000, 1),
                    "slow_rtts": pingers.slow}


# -- the two modes -----------------------------------------------------------------------


def recording(args: argparse.Namespace, proxies: list[WsgateProcess],
              label: str) -> AbstractContextManager[spy.Recording | None]:
    """py-spy recording the proxies (--spy), or nothing."""
    if not args.spy:
        return nullcontext()
    return spy.Recording([p.proc.pid for p in proxies if p.proc], RESULTS, label)


def proxy_urls(proxies: list[WsgateProcess], route: int) -> list[str]:
    return [f"ws://127.0.0.1:{p.port}/r{route}" for p in proxies]


async def operator_metric(http: aiohttp.ClientSession, port: int, name: str) -> float | None:
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError):
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values) if values else None


async def wait_statuses(http: aiohttp.ClientSession, port: int, expected: int,
                        limit: float) -> float | None:
    """Seconds until the operator has written ``expected`` statuses and has none queued
    (None: not within ``limit``)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        written = await operator_metric(
            http, port, 'wsgate_operator_status_writes_total{outcome="written"}')
        pending = await operator_metric(http, port, "wsgate_operator_statuses_pending")
        if (written or 0) >= expected and pending == 0:
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


def rotated_key(i: int) -> str:
    return f"rotated-{i}"


# A write (a key rotated to the given one, a consumer deleted): returns when it was made
# (time.perf_counter()), which is where its write -> enforced latency starts.
Rotate = Callable[[int, str], Awaitable[float]]
Delete = Callable[[int], Awaitable[float]]


async def writes(http: aiohttp.ClientSession, urls: list[str], count: int, rotate: Rotate,
                 delete: Delete, limit: float) -> dict[str, list[float]]:
    """``count`` key rotations, then ``count`` deletions, one at a time: write ->
    enforced on every proxy."""
    found: dict[str, list[float]] = {"key rotated": [], "consumer deleted": []}
    for i in range(1, count + 1):
        old, new = world.original_key(i), rotated_key(i)
        written = await rotate(i, new)
        await until(enforced(http, urls, {old: 401, new: 101}), limit)
        found["key rotated"].append(time.perf_counter() - written)
    for i in range(count + 1, 2 * count + 1):
        written = await delete(i)
        await until(enforced(http, urls, {world.original_key(i): 401}), limit)
        found["consumer deleted"].append(time.perf_counter() - written)
    return found


def rendered_writes(consumers: int, count: int) -> tuple[dict[int, str], dict[int, str]]:
    """The consumer file each standalone write leaves (rotations, then deletions, as
    ``writes`` makes them), rendered before anything is timed: rendering a file's YAML
    holds this process's loop for tens of ms, which the live sessions' round trips and
    the write -> enforced latency would count."""
    keys = {i: world.original_key(i) for i in range(consumers)}
    rotated, deleted = {}, {}
    for i in range(1, count + 1):
        keys[i] = rotated_key(i)
        rotated[i] = world.consumer_text(i - i % world.PER_FILE, keys)
    for i in range(count + 1, 2 * count + 1):
        del keys[i]
        deleted[i] = world.consumer_text(i - i % world.PER_FILE, keys)
    return rotated, deleted


def pinger_keys(consumers: int) -> list[str]:
    # The last consumers: never touched by the writes.
    return [world.original_key(consumers - 1 - j) for j in range(SESSIONS)]


def full_body(directory: Path, consumers: int) -> bytes:
    """A whole config stream of the manifests with every consumer's key changed but the
    live sessions' (which stay allowed): a new version, all of whose consumers are new
    objects to the proxies, pushed whole as to a proxy that missed a change. Compiled
    here before sessions are timed."""
    copy = Path(tempfile.mkdtemp(prefix="wsgate-push-"))
    for path in directory.glob("*.yaml"):
        (copy / path.name).write_bytes(path.read_bytes())
    live = {consumers - 1 - j for j in range(SESSIONS)}
    keys = {i: world.original_key(i) if i in live else f"pushed-{i}" for i in range(consumers)}
    for first in range(0, consumers, world.PER_FILE):
        world.consumer_file(copy, first, keys)
    compiled = compile_directory(copy).compiled
    assert compiled is not None
    return config_stream.encode(compiled.version, None, [
        (kind, body) for (kind, _key), (body, _digest) in compiled.encoded.items()])


async def push_full(http: aiohttp.ClientSession, admin_ports: list[int], body: bytes
                    ) -> float:
    """PUT a whole config stream to every proxy at once: seconds until all answered."""
    async def put(port: int) -> None:
        async with http.put(f"http://127.0.0.1:{port}/config", data=body, headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": config_stream.MEDIA_TYPE}) as response:
            response.raise_for_status()
    started = time.perf_counter()
    await asyncio.gather(*(put(port) for port in admin_ports))
    return time.perf_counter() - started


async def warm_routes(http: aiohttp.ClientSession, proxies: list[WsgateProcess],
                      routes: int, key: str) -> None:
    """One session on every route of every proxy: each route has its series."""
    urls = [url for route in range(routes) for url in proxy_urls(proxies, route)]
    queue = iter(urls)

    async def worker() -> None:
        for url in queue:
            await handshake_status(http, url, key)
    await asyncio.gather(*(worker() for _ in range(20)))


async def scrapes(http: aiohttp.ClientSession, admin_ports: list[int], rounds: int
                  ) -> tuple[list[float], int]:
    """GET /metrics from every proxy in turn, ``rounds`` times: each scrape's seconds,
    and the lines (series) of the last."""
    durations, lines = [], 0
    for _ in range(rounds):
        for port in admin_ports:
            started = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            durations.append(time.perf_counter() - started)
            lines = sum(1 for line in text.splitlines() if not line.startswith("#"))
            await asyncio.sleep(0.2)
    return durations, lines


async def operator_mode(args: argparse.Namespace, consumers: int) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": "operator", "consumers": consumers}
    routes = args.routes
    port = shared_admin_port(PROXY_ADDRESSES)
    with ExitStack() as stack:
        echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0"))
        proxies = [stack.enter_context(WsgateProcess(
            "proxy", "--listen", "127.0.0.1:0", "--admin-listen", f"{address}:{port}",
            env={"WSGATE_ADMIN_TOKEN": TOKEN}, name=f"proxy-{n}"))
            for n, address in enumerate(PROXY_ADDRESSES)]
        empty_rss = [rss_kib([p.proc.pid]) for p in proxies]
        emulator = Emulator(routes, consumers, echo.port, {
            f"proxy-{n}": address for n, address in enumerate(PROXY_ADDRESSES)}).start()
        stack.callback(emulator.stop)
        kubeconfig = write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig", emulator.url)
        metrics_port = shared_admin_port(["127.0.0.1"])

        def operator() -> WsgateProcess:
            return WsgateProcess(
                "operator", "--proxy-selector",
                ",".join(f"{k}={v}" for k, v in PROXY_LABELS.items()),
                "--proxy-namespace", PROXY_NAMESPACE, "--proxy-admin-port", str(port),
                "--metrics-listen", f"127.0.0.1:{metrics_port}",
                env={"KUBECONFIG": str(kubeconfig), "WSGATE_ADMIN_TOKEN": TOKEN},
                name="operator")

        async with aiohttp.ClientSession() as http:
            last = proxy_urls(proxies, routes - 1)
            started = time.perf_counter()
            running = operator().start_without_waiting()
            try:
                result["startup_s"] = round(await until(
                    enforced(http, last, {world.original_key(consumers - 1): 101}),
                    args.timeout, interval=0.1), 2)
            except TimeoutError:
                result["startup_s"] = None
                print(f"  operator mode, {consumers} consumers: no full sync within "
                      f"{args.timeout:.0f}s")
                running.stop()
                return result
            print(f"  operator start -> both proxies serve {routes} routes + {consumers} "
                  f"consumers: {result['startup_s']}s")
            result["proxy_kib_per_consumer"] = round(statistics.mean(
                (rss_kib([p.proc.pid]) - base) / consumers
                for p, base in zip(proxies, empty_rss, strict=True)), 2)
            result["proxy_rss_mib"] = [round(rss_kib([p.proc.pid]) / 1024, 1) for p in proxies]
            # Every route's and consumer's first status written: from the operator's start.
            settled = await wait_statuses(http, metrics_port, routes + consumers, args.timeout)
            result["statuses_s"] = None if settled is None else \
                round(time.perf_counter() - started, 1)
            print(f"  operator start -> its {routes + consumers} statuses written: "
                  f"{result['statuses_s'] or 'not'} s")

            # A write is timed from its request's start (the API server stores it
            # before it answers).
            async def rotate(i: int, key: str) -> float:
                sent = time.perf_counter()
                async with http.patch(
                        f"{emulator.url}/api/v1/namespaces/default/secrets/user-{i}-key",
                        json={"data": {"key": base64.b64encode(key.encode()).decode()}},
                        headers={"Content-Type": "application/merge-patch+json"}) as response:
                    response.raise_for_status()
                return sent

            async def delete(i: int) -> float:
                sent = time.perf_counter()
                async with http.delete(f"{emulator.url}/apis/{CR}/namespaces/default/"
                                       f"wsconsumers/user-{i}") as response:
                    response.raise_for_status()
                return sent

            pushed = await operator_metric(http, metrics_port, "wsgate_operator_push_bytes_total")
            with recording(args, proxies, f"propagation-operator-{consumers}") as traces:
                async with Pingers(proxy_urls(proxies, 0), pinger_keys(consumers)) as pingers:
                    await asyncio.sleep(2)
                    quiet_end = time.perf_counter()
                    delays = await writes(http, last, args.writes, rotate, delete, args.timeout)
                    writes_end = time.perf_counter()
                    after = await operator_metric(http, metrics_port,
                                                  "wsgate_operator_push_bytes_total")
                    result["bytes_per_change"] = (
                        round((after - pushed) / (2 * args.writes)) if after is not None
                        and pushed is not None else None)
                    # A restart after a change made while the operator was down: each proxy
                    # runs a version the new operator never made.
                    running.stop()
                    restart_key = world.original_key(2 * args.writes + 1)
                    await rotate(2 * args.writes + 1, "after-restart")
                    restarted_at = time.perf_counter()
                    running = operator().start_without_waiting()
                    stack.callback(running.stop)
                    try:
                        result["restart_s"] = round(await until(enforced(
                            http, last, {restart_key: 401, "after-restart": 101}), args.timeout), 2)
                    except TimeoutError:
                        result["restart_s"] = None
                    restart_end = time.perf_counter()
                    await asyncio.sleep(1)
                    result["restart_bytes"] = {kind: await operator_metric(
                        http, metrics_port, f'wsgate_operator_push_bytes_total{{kind="{kind}"}}')
                        for kind in ("delta", "full")}
                    # What the restarted operator wrote (the statuses it found were its own).
                    result["restart_status_writes"] = await operator_metric(
                        http, metrics_port,
                        'wsgate_operator_status_writes_total{outcome="written"}')
            result["write_ms"] = {k: summary_ms(v) for k, v in delays.items()}
            result["each_write_ms"] = {k: each_ms(v) for k, v in delays.items()}
            result["rtt_quiet_ms"] = pingers.phase("quiet", 0, quiet_end)
            result["rtt_writes_ms"] = pingers.phase("writes", quiet_end, writes_end)
            result["rtt_restart_ms"] = pingers.phase("restart", restarted_at, restart_end)
            result.update(pinger_figures(pingers, traces))
    return result


async def standalone_mode(args: argparse.Namespace, consumers: int) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": "standalone", "consumers": consumers}
    routes = args.routes
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-sa-")))
        echo = stack.enter_context(WsgateProcess("echo", "--listen", "127.0.0.1:0"))
        started = time.perf_counter()
        world.write_files(directory, routes, consumers, echo.port)
        print(f"  wrote {len(os.listdir(directory))} manifest files in "
              f"{time.perf_counter() - started:.1f}s")
        empty = stack.enter_context(WsgateProcess("proxy", "--listen", "127.0.0.1:0",
                                                  "--admin-listen", "127.0.0.1:0"))
        empty_rss = rss_kib([empty.proc.pid])
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            proxies = [stack.enter_context(WsgateProcess(
                "proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--manifests", str(directory), env={"WSGATE_ADMIN_TOKEN": TOKEN},
                name=f"proxy-{n}")) for n in range(2)]
            last = proxy_urls(proxies, routes - 1)
            try:
                await until(enforced(http, last, {world.original_key(consumers - 1): 101}),
                            args.timeout, interval=0.1)
            except TimeoutError:
                result["startup_s"] = None
                return result
            result["startup_s"] = round(time.perf_counter() - started, 2)
            print(f"  standalone start -> both proxies serve the set: {result['startup_s']}s")
            result["proxy_kib_per_consumer"] = round(statistics.mean(
                (rss_kib([p.proc.pid]) - empty_rss) / consumers for p in proxies), 2)
            result["proxy_rss_mib"] = [round(rss_kib([p.proc.pid]) / 1024, 1) for p in proxies]
            admin_ports = [p.admin_port for p in proxies]
            await warm_routes(http, proxies, routes, world.original_key(consumers - 1))
            body = full_body(directory, consumers)
            rotated, deleted = rendered_writes(consumers, args.writes)
            # What this process holds from here on (the compiled full body, the rendered
            # files) out of its collector's sight: a full collection walking it would
            # stall the loop the pingers and the polls run on.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)

            # A write is timed from the rename that makes it (what the watcher sees).
            async def rotate(i: int, key: str) -> float:
                assert key == rotated_key(i)
                world.replace_file(world.consumer_path(directory, i - i % world.PER_FILE),
                                   rotated[i])
                return time.perf_counter()

            async def delete(i: int) -> float:
                world.replace_file(world.consumer_path(directory, i - i % world.PER_FILE),
                                   deleted[i])
                return time.perf_counter()

            with recording(args, proxies, f"propagation-standalone-{consumers}") as traces:
                async with Pingers(proxy_urls(proxies, 0), pinger_keys(consumers)) as pingers:
                    await asyncio.sleep(2)
                    quiet_end = time.perf_counter()
                    delays = await writes(http, last, args.writes, rotate, delete, args.timeout)
                    writes_end = time.perf_counter()
                    await asyncio.sleep(1)
                    scrape_start = time.perf_counter()
                    durations, series = await scrapes(http, admin_ports, args.scrapes)
                    scrape_end = time.perf_counter()
                    await asyncio.sleep(1)
                    push_start = time.perf_counter()
                    result["full_push_s"] = round(await push_full(http, admin_ports, body), 2)
                    await asyncio.sleep(1)
                    push_end = time.perf_counter()
            result["write_ms"] = {k: summary_ms(v) for k, v in delays.items()}
            result["rtt_quiet_ms"] = pingers.phase("quiet", 0, quiet_end)
            result["rtt_writes_ms"] = pingers.phase("writes", quiet_end, writes_end)
            result["scrape_ms"] = summary_ms(durations)
            result["scrape_series"] = series
            result["rtt_scrapes_ms"] = pingers.phase("scrapes", scrape_start, scrape_end)
            result["rtt_full_push_ms"] = pingers.phase("full push", push_start, push_end)
            result.update(pinger_figures(pingers, traces))
    return result


# -- report ------------------------------------------------------------------------------


def _ms(summary: dict[str, float] | None, *keys: str) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return " / ".join(f"{summary[k]:.0f}" for k in keys)


def report(results: list[dict[str, Any]]) -> str:
    rows = [["mode", "consumers", "start-up s", "statuses s", "rotated p50/p99/max ms",
             "deleted p50/p99/max ms", "RTT quiet p99/max", "RTT writes p99/max",
             "restart s", "RTT restart p99/max", "restart bytes delta/full", "full push s",
             "RTT full push p99/max", "scrape p50/max ms", "series", "RTT scrapes p99/max",
             "bytes/change", "KiB/consumer"]]
    for r in results:
        writes_ms = r.get("write_ms") or {}
        rows.append([
            r["mode"], f"{r['consumers']:,}",
            "timeout" if r.get("startup_s") is None else f"{r['startup_s']:.1f}",
            "-" if r.get("statuses_s") is None else f"{r['statuses_s']:.1f}",
            _ms(writes_ms.get("key rotated"), "p50", "p99", "max"),
            _ms(writes_ms.get("consumer deleted"), "p50", "p99", "max"),
            _ms(r.get("rtt_quiet_ms"), "p99", "max"),
            _ms(r.get("rtt_writes_ms"), "p99", "max"),
            "-" if r.get("restart_s") is None else f"{r['restart_s']:.1f}",
            _ms(r.get("rtt_restart_ms"), "p99", "max"),
            " / ".join("-" if b is None else f"{b:,.0f}"
                       for b in (r.get("restart_bytes") or {}).values()) or "-",
            "-" if r.get("full_push_s") is None else f"{r['full_push_s']:.2f}",
            _ms(r.get("rtt_full_push_ms"), "p99", "max"),
            _ms(r.get("scrape_ms"), "p50", "max"),
            f"{r['scrape_series']:,}" if r.get("scrape_series") else "-",
            _ms(r.get("rtt_scrapes_ms"), "p99", "max"),
            "-" if r.get("bytes_per_change") is None else f"{r['bytes_per_change']:,}",
            "-" if r.get("proxy_kib_per_consumer") is None
            else f"{r['proxy_kib_per_consumer']:.2f}",
        ])
    return table(rows)


async def run(args: argparse.Namespace) -> None:
    results = []
    async with AsyncExitStack():
        for consumers in args.sizes:
            for mode in args.modes:
                print(f"\n{mode} mode: {args.routes} routes, {consumers} consumers, "
                      f"{args.writes} writes of each kind")
                measure = operator_mode if mode == "operator" else standalone_mode
                try:
                    results.append(await measure(args, consumers))
                except (TimeoutError, RuntimeError) as exc:
                    print(f"  failed: {exc}")
                    results.append({"mode": mode, "consumers": consumers, "error": str(exc)})
                print(report(results[-1:]))
    print("\n" + report(results))
    out = write_results("propagation", {"args": vars(args), "results": results})
    print(f"\nwrote {out}")
    _plot(results)


def _plot(results: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, marker in (("operator", "o"), ("standalone", "s")):
        mine = [r for r in results if r["mode"] == mode and r.get("write_ms")]
        xs = [r["consumers"] for r in mine]
        axes[0].plot(xs, [r["write_ms"]["key rotated"]["p99"] for r in mine], marker=marker,
                     label=f"{mode}: write -> enforced p99")
        axes[1].plot(xs, [r["rtt_writes_ms"]["max"] for r in mine], marker=marker,
                     label=f"{mode}: longest round trip during writes")
    for ax, title in zip(axes, ("write -> enforced on every proxy (ms)",
                                "live sessions' longest round trip (ms)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("consumers (1,000 routes)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "propagation.png", dpi=100)
    print(f"wrote {RESULTS / 'propagation.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--modes", nargs="+", default=["operator", "standalone"],
                        choices=["operator", "standalone"])
    parser.add_argument("--writes", type=int, default=20, help="writes of each kind")
    parser.add_argument("--scrapes", type=int, default=5,
                        help="standalone: GET /metrics from each proxy this many times, "
                             "every route with series, sessions live")
    parser.add_argument("--spy", action="store_true",
                        help="record the proxies with py-spy while sessions are live and "
                             "name what each slow round trip's proxy ran meanwhile (traces "
                             "in bench/results/)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="how long one phase (a start-up, one write) may take")
    run_main(run, parser)


if __name__ == "__main__":
    main()
