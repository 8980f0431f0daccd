"""Where the proxy's time goes, on bench/relay.py's loads.

For each load (echo round trips, handshakes, wss:// handshakes, wss:// echo) the Node
client runs against wsgate and against nginx, and the CPU time of the process in the
middle (user + system, from /proc) is divided by the work done: µs per handshake, µs
per relayed message (an echo round trip is two: one each way). With --py-spy (PyPI
`py-spy`), wsgate is sampled during its runs and the top frames are printed, by own
time and by time including callees; --native adds C frames (uvloop, aiohttp's parser,
OpenSSL). Writes bench/results/profile.json and profile-<load>.txt (collapsed stacks,
for flame graph tools).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import RESULTS, table, write_results
from bench.paths import (
    Certificate,
    Path_,
    certificate,
    client,
    raise_descriptor_limit,
    start_echo,
    start_nginx,
    start_wsgate,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def top_frames(collapsed: Path, count: int) -> tuple[list[tuple[str, float]],
                                                     list[tuple[str, float]]]:
    """(own, inclusive): the frames with the largest share of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        weight = int(n)
        frames = [_short(f) for f in stack.split(";")]
        if not any(f.startswith("Runner.run") for f in frames):
            continue  # another thread: py-spy cannot always tell a thread blocked in C
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            inclusive[frame] += weight
    if not samples:
        return [], []
    return ([(f, n / samples) for f, n in own.most_common(count)],
            [(f, n / samples) for f, n in inclusive.most_common(count)])


def _short(frame: str) -> str:
    """'handle (wsgate_proxy/gateway.py:58)' -> 'handle (gateway.py:58)'."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    file, _, line = where.rstrip(")").rpartition(":")
    return f"{name} ({Path(file).name}:{line})"


def measured(path: Path_, run: Callable[[], dict[str, Any]], units: Callable[[dict], int],
             spy: list[str] | None, out: Path | None) -> dict[str, Any]:
    sampler = None
    if spy is not None and out is not None:
        sampler = subprocess.Popen([*spy, "--pid", str(path.pids[0]), "--output", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
    before = cpu_seconds(path.pids)
    result = run()
    used = cpu_seconds(path.pids) - before
    if sampler is not None:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(30)
    n = units(result)
    return {"cpu_s": round(used, 3), "units": n, "us_per_unit": round(used / n * 1e6, 1)}


def run(args: argparse.Namespace) -> None:
    raise_descriptor_limit()
    spy = None
    if args.py_spy:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = [binary, "record", "--format", "raw", "--rate", "250"]
        if args.native:
            spy.append("--native")
    with ExitStack() as stack:
        cert: Certificate = certificate(stack)
        direct = start_echo(stack, cert)
        paths = [start_wsgate(stack, direct.port, cert)]
        if (nginx := start_nginx(stack, direct.port, cert)) is not None:
            paths.append(nginx)
        echo = dict(connections=args.connections, roundTrips=args.round_trips, size=args.size)
        loads: dict[str, tuple[Callable[[Path_], dict], Callable[[dict], int], str]] = {
            "echo": (lambda p: client("echo", p, cert, **echo),
                     lambda r: 2 * r["messages"], "relayed message"),
            "handshakes": (lambda p: client("handshakes", p, cert, total=args.handshakes,
                                            concurrency=args.concurrency),
                           lambda r: r["served"], "handshake"),
            "tls_handshakes": (lambda p: client("handshakes", p, cert, tls=True,
                                                total=args.handshakes // 2,
                                                concurrency=args.concurrency),
                               lambda r: r["served"], "wss:// handshake"),
            "tls_echo": (lambda p: client("echo", p, cert, tls=True, **echo),
                         lambda r: 2 * r["messages"], "wss:// relayed message"),
        }
        for path in paths:  # warm up
            client("handshakes", path, cert, total=200, concurrency=args.concurrency)
        report: dict[str, Any] = {}
        for name, (load, units, unit) in loads.items():
            if args.only and name not in args.only:
                continue
            entry: dict[str, Any] = {"unit": unit}
            for path in paths:
                out = RESULTS / f"profile-{name}.txt" if path.name == "wsgate" else None
                entry[path.name] = measured(path, lambda p=path, f=load: f(p), units,
                                            spy if out else None, out)
            report[name] = entry
            _print(name, entry, paths, args.top)
    write_results("profile", {"args": vars(args), "loads": report})


def _print(name: str, entry: dict[str, Any], paths: list[Path_], top: int) -> None:
    print(f"\n== {name}: CPU µs per {entry['unit']} in the process in the middle")
    rows = [["path", "cpu s", entry["unit"] + "s", "µs each"]]
    for path in paths:
        e = entry[path.name]
        rows.append([path.name, f"{e['cpu_s']:.2f}", str(e["units"]), f"{e['us_per_unit']:.1f}"])
    print(table(rows))
    collapsed = RESULTS / f"profile-{name}.txt"
    if collapsed.exists() and collapsed.stat().st_mtime > time.time() - 600:
        own, inclusive = top_frames(collapsed, top)
        print("\nwsgate, own time:")
        print(table([["share", "frame"], *[[f"{s:.1%}", f] for f, s in own]]))
        print("\nwsgate, including callees:")
        print(table([["share", "frame"], *[[f"{s:.1%}", f] for f, s in inclusive]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--handshakes", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--py-spy", action="store_true", help="sample wsgate with py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", nargs="*", help="loads to run (default: all)")
    RESULTS.mkdir(exist_ok=True)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
