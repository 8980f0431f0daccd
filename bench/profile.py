"""Where the proxy's time goes, on bench/relay.py's loads.

For each load (echo round trips, handshakes, wss:// handshakes, wss:// echo) the Node
client runs direct, against wsgate and against nginx, in --rounds interleaved rounds,
and the CPU time of the process in the middle (user + system, from /proc) is divided by
the work done: µs per handshake, µs per relayed message (an echo round trip is two: one
each way); the median of the rounds is reported. So is the CPU time of the whole path
(the Node client and echo server too) per unit: on a machine whose cores are all busy,
what bounds a path's rate is that sum, not which process spends it. With --baseline
DIR, an earlier checkout of wsgate is measured alongside, as another path (the profile
before and after a change, under the same load). With --py-spy (PyPI `py-spy`), a
further run per load samples each wsgate (its CPU time not counted) and prints the top
frames of its event loop's thread, by own time and including callees; --native adds C
frames (uvloop, aiohttp's parser, OpenSSL, the kernel's entry points). Writes
bench/results/profile.json and profile-<load>[-baseline].txt (collapsed stacks, for
flame graph tools).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
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
    Path_,
    certificate,
    client,
    raise_descriptor_limit,
    start_echo,
    start_nginx,
    start_wsgate,
)

TICKS = os.sysconf("SC_CLK_TCK")

Load = tuple[Callable[[Path_], dict[str, Any]], Callable[[dict[str, Any]], int], str]


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / TICKS, system / TICKS


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def us_per_unit(path: Path_, upstream: list[int], load: Load) -> tuple[float, float, float,
                                                                        float]:
    """CPU µs per unit of the process in the middle, the system part of it, that of the
    whole path (the client, a process of its own that has ended, and the upstream too),
    and the share of one core the process in the middle used while the load ran."""
    run, units, _ = load
    before = cpu_times(path.pids), cpu_seconds(upstream), _children_cpu()
    result = run(path)
    after = cpu_times(path.pids)
    middle = sum(after) - sum(before[0])
    system = after[1] - before[0][1]
    rest = cpu_seconds(upstream) - before[1] + _children_cpu() - before[2]
    n = units(result)
    return (middle / n * 1e6, system / n * 1e6, (middle + rest) / n * 1e6,
            middle / result["seconds"])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sampled(path: Path_, load: Load, spy: list[str], out: Path) -> None:
    sampler = subprocess.Popen([*spy, "--pid", str(path.pids[0]), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    load[0](path)
    sampler.send_signal(signal.SIGINT)
    sampler.wait(30)


def top_frames(collapsed: Path, count: int) -> tuple[list[tuple[str, float]],
                                                     list[tuple[str, float]]]:
    """(own, inclusive): the event loop thread's frames with the largest share of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = [_short(f) for f in stack.split(";")]
        if not any(f.startswith("Runner.run") for f in frames):
            continue  # another thread: py-spy cannot always tell a thread blocked in C
        weight = int(n)
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            inclusive[frame] += weight
    if not samples:
        return [], []
    return ([(f, n / samples) for f, n in own.most_common(count)],
            [(f, n / samples) for f, n in inclusive.most_common(count)])


def _short(frame: str) -> str:
    """'handle (/x/wsgate_proxy/gateway.py:58)' -> 'handle (gateway.py:58)'."""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    file, _, line = where.rstrip(")").rpartition(":")
    return f"{name} ({Path(file).name}:{line})"


def run(args: argparse.Namespace) -> None:
    raise_descriptor_limit()
    spy = None
    if args.py_spy:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = [binary, "record", "--format", "raw", "--rate", "250"]
        if args.native:
            spy.append("--native")
    report: dict[str, Any] = {}
    with ExitStack() as stack:
        cert = certificate(stack)
        direct = start_echo(stack, cert)
        paths = [direct, start_wsgate(stack, direct.port, cert)]
        if args.baseline is not None:
            paths.append(start_wsgate(stack, direct.port, cert, checkout=args.baseline))
        if (nginx := start_nginx(stack, direct.port, cert)) is not None:
            paths.append(nginx)
        echo = dict(connections=args.connections, roundTrips=args.round_trips, size=args.size)
        loads: dict[str, Load] = {
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
        for name, load in loads.items():
            if args.only and name not in args.only:
                continue
            rounds: dict[str, list[float]] = {p.name: [] for p in paths}
            system: dict[str, list[float]] = {p.name: [] for p in paths}
            whole: dict[str, list[float]] = {p.name: [] for p in paths}
            share: dict[str, list[float]] = {p.name: [] for p in paths}
            for i in range(args.rounds):
                for path in paths if i % 2 == 0 else paths[::-1]:
                    middle, sys_us, path_us, core = us_per_unit(path, direct.upstream_pids,
                                                                load)
                    rounds[path.name].append(middle)
                    system[path.name].append(sys_us)
                    whole[path.name].append(path_us)
                    share[path.name].append(core)
            report[name] = {"unit": load[2], "load_average": os.getloadavg()[0],
                            "us": {n: statistics.median(v) for n, v in rounds.items()},
                            "rounds": rounds,
                            "system_us": {n: statistics.median(v) for n, v in system.items()},
                            "core_share": {n: statistics.median(v) for n, v in share.items()},
                            "path_us": {n: statistics.median(v) for n, v in whole.items()},
                            "path_rounds": whole}
            _print(name, report[name])
            if spy is not None:
                for path in paths[1:3 if args.baseline is not None else 2]:  # each wsgate
                    suffix = "-baseline" if path is not paths[1] else ""
                    out = RESULTS / f"profile-{name}{suffix}.txt"
                    sampled(path, load, spy, out)
                    _print_frames(path.name, out, args.top)
    write_results("profile", {"args": {k: str(v) for k, v in vars(args).items()},
                              "loads": report})


def _print(name: str, entry: dict[str, Any]) -> None:
    print(f"\n== {name}: CPU µs per {entry['unit']}, in the process in the middle and "
          f"on the whole path (median of rounds; load average {entry['load_average']:.1f})")
    rows = [["path", "µs in the middle", "of which system", "rounds", "cores used",
             "µs on the whole path", "rounds"]]
    for path, us in entry["us"].items():
        rows.append([path, f"{us:.1f}", f"{entry['system_us'][path]:.1f}",
                     " ".join(f"{r:.0f}" for r in entry["rounds"][path]),
                     f"{entry['core_share'][path]:.2f}", f"{entry['path_us'][path]:.1f}",
                     " ".join(f"{r:.0f}" for r in entry["path_rounds"][path])])
    print(table(rows))


def _print_frames(name: str, collapsed: Path, top: int) -> None:
    if not collapsed.exists():
        return
    own, inclusive = top_frames(collapsed, top)
    print(f"\n{name}, own time:")
    print(table([["share", "frame"], *[[f"{s:.1%}", f] for f, s in own]]))
    print(f"\n{name}, including callees:")
    print(table([["share", "frame"], *[[f"{s:.1%}", f] for f, s in inclusive]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also measure wsgate from this checkout (an earlier build)")
    parser.add_argument("--py-spy", action="store_true", help="sample wsgate with py-spy")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", nargs="*", help="loads to run (default: all)")
    RESULTS.mkdir(exist_ok=True)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
