"""The data path: wsgate against nginx and a direct connection, every figure in one run.

Paths (bench/paths.py): direct to a Node `ws` echo server, through `wsgate proxy`, and
through nginx (one worker; the same key check; TLS 1.3 with the same certificate and
cipher). The client is a Node `ws` client, one process per measurement. With --baseline
DIR, wsgate from an earlier checkout is measured alongside, as another path in the same
rounds (the table before and after a change, under the same load).

Figures, each measured in --rounds interleaved rounds (direct, wsgate, nginx; then the
other way round), reported as the median of the per-round ratios, so that drift on a
shared machine cancels out:
  - memory per idle session: --idle sessions held open, resident memory of the process
    in the middle over what it held before the first round (measured first);
  - echo: --connections x --round-trips round trips of --size bytes: messages/s, p99;
  - handshakes: --handshakes sessions opened and closed, --concurrency at a time, with
    the key check, over ws:// and wss://;
  - wss:// echo: the echo load over TLS;
  - reconnect storm: --storm clients connecting at once with the key check: the time
    until every one is served, and how many were refused (none should be).
Prints the table, writes bench/results/relay.json and, with matplotlib
(`pip install -e '.[bench]'`), bench/results/relay.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS, table, write_results
from bench.paths import (
    BACKLOG,
    TLS_CIPHER,
    Certificate,
    IdleSessions,
    Path_,
    certificate,
    client,
    raise_descriptor_limit,
    rss_kib,
    start_echo,
    start_nginx,
    start_wsgate,
)


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    unit: str
    higher_is_better: bool


FIGURES = [
    Figure("idle_kib", "memory per idle session", "KiB", False),
    Figure("echo_msgs", "echo throughput", "msgs/s", True),
    Figure("echo_p99", "echo round trip p99", "ms", False),
    Figure("handshakes", "handshakes/s, with the key check", "/s", True),
    Figure("tls_handshakes", "wss:// handshakes/s, with the key check", "/s", True),
    Figure("tls_echo_msgs", "wss:// echo throughput", "msgs/s", True),
    Figure("tls_echo_p99", "wss:// echo round trip p99", "ms", False),
    Figure("storm_s", "reconnect storm: time until all served", "s", False),
]


def interleaved(paths: list[Path_], rounds: int,
                measure: Callable[[Path_], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``measure`` each path once per round: forwards in even rounds, backwards in odd ones."""
    results: dict[str, list[dict[str, Any]]] = {p.name: [] for p in paths}
    for i in range(rounds):
        for path in paths if i % 2 == 0 else paths[::-1]:
            results[path.name].append(measure(path))
    return results


def measure_all(args: argparse.Namespace, paths: list[Path_], cert: Certificate,
                log: Callable[[str], None]
                ) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Every figure, {figure key: {path name: [value per round]}}, and the raw results."""
    values: dict[str, dict[str, list[float]]] = {f.key: {} for f in FIGURES}
    raw: dict[str, Any] = {}

    def keep(key: str, results: dict[str, list[dict[str, Any]]], field: str,
             check: bool = True) -> None:
        for name, runs in results.items():
            values[key][name] = [r[field] for r in runs]
            if check:
                for r in runs:
                    if r.get("failures"):
                        log(f"  ! {name}: refused or failed: {r['failures']}")
        raw[key] = results

    # Warm up every path (imports, pools, JIT) before anything is counted.
    for path in paths:
        client("echo", path, cert, connections=5, roundTrips=200, size=args.size)
        client("handshakes", path, cert, total=200, concurrency=args.concurrency)
        client("handshakes", path, cert, tls=True, total=50, concurrency=args.concurrency)

    if args.idle:
        log(f"memory: {args.idle} idle sessions")
        middle = [p for p in paths if p.pids]
        base = {p.name: rss_kib(p.pids) for p in middle}

        def idle(path: Path_) -> dict[str, Any]:
            held = IdleSessions(path, cert, args.idle)
            time.sleep(0.5)  # let the middle process settle before reading its memory
            kib = (rss_kib(path.pids) - base[path.name]) / max(1, held.opened["open"])
            held.close()
            return {"kib": kib, "failures": held.opened["failures"]}

        keep("idle_kib", interleaved(middle, args.rounds, idle), "kib")

    echo = dict(connections=args.connections, roundTrips=args.round_trips, size=args.size)
    log(f"echo: {args.connections} x {args.round_trips} round trips of {args.size} B")
    results = interleaved(paths, args.rounds, lambda p: client("echo", p, cert, **echo))
    keep("echo_msgs", results, "msgsPerS")
    keep("echo_p99", results, "p99Ms", check=False)

    log(f"handshakes: {args.handshakes}, {args.concurrency} at a time")
    keep("handshakes", interleaved(paths, args.rounds, lambda p: client(
        "handshakes", p, cert, total=args.handshakes, concurrency=args.concurrency)), "perS")

    log(f"wss:// handshakes: {args.tls_handshakes}, {args.concurrency} at a time")
    results = interleaved(paths, args.rounds, lambda p: client(
        "handshakes", p, cert, tls=True, total=args.tls_handshakes,
        concurrency=args.concurrency))
    keep("tls_handshakes", results, "perS")
    raw["tls_negotiated"] = {name: runs[0].get("tls") for name, runs in results.items()}

    log(f"wss:// echo: {args.connections} x {args.round_trips} round trips")
    results = interleaved(paths, args.rounds, lambda p: client("echo", p, cert, tls=True,
                                                                **echo))
    keep("tls_echo_msgs", results, "msgsPerS")
    keep("tls_echo_p99", results, "p99Ms", check=False)

    if args.storm:
        log(f"reconnect storm: {args.storm} clients at once")
        results = interleaved(paths, args.rounds, lambda p: client(
            "storm", p, cert, total=args.storm, timeoutS=120))
        keep("storm_s", results, "seconds")
    return values, raw


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y]


def summarize(values: dict[str, dict[str, list[float]]], wsgate: str, nginx: str | None,
              direct: str, baseline: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for figure in FIGURES:
        per_path = values.get(figure.key, {})
        if wsgate not in per_path:
            continue
        row: dict[str, Any] = {"figure": figure.key, "title": figure.title,
                               "unit": figure.unit, "higher_is_better": figure.higher_is_better,
                               "median": {name: statistics.median(v)
                                          for name, v in per_path.items() if v}}
        if nginx in per_path:
            r = ratios(per_path[wsgate], per_path[nginx])
            row["wsgate_vs_nginx"] = statistics.median(r)
            row["wsgate_vs_nginx_rounds"] = r
            if baseline in per_path:
                r = ratios(per_path[baseline], per_path[nginx])
                row["baseline_vs_nginx"] = statistics.median(r)
                row["baseline_vs_nginx_rounds"] = r
        if direct in per_path:
            row["wsgate_vs_direct"] = statistics.median(ratios(per_path[wsgate],
                                                               per_path[direct]))
            if nginx in per_path:
                row["nginx_vs_direct"] = statistics.median(ratios(per_path[nginx],
                                                                  per_path[direct]))
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], names: list[str]) -> None:
    before = any("baseline_vs_nginx" in row for row in rows)
    header = ["figure", *[f"{n} (median)" for n in names],
              *(["baseline / nginx"] if before else []), "wsgate / nginx", "goal",
              "rounds' ratios"]
    lines = [header]
    for row in rows:
        goal = ">= 1.0" if row["higher_is_better"] else "<= 1.0"
        ratio_columns = (["baseline_vs_nginx"] if before else []) + ["wsgate_vs_nginx"]
        lines.append([
            row["title"],
            *[_fmt(row["median"].get(n), row["unit"]) for n in names],
            *[f"{row[c]:.2f}" if c in row else "-" for c in ratio_columns],
            goal,
            " ".join(f"{r:.2f}" for r in row.get("wsgate_vs_nginx_rounds", [])),
        ])
    print(table(lines))


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("msgs/s", "/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}"


def run(args: argparse.Namespace) -> None:
    descriptors = raise_descriptor_limit()
    load = os.getloadavg()
    with ExitStack() as stack:
        cert = certificate(stack)
        direct = start_echo(stack, cert)
        paths = [direct, start_wsgate(stack, direct.port, cert)]
        if args.baseline is not None:
            paths.append(start_wsgate(stack, direct.port, cert, checkout=args.baseline))
        if not args.no_nginx:
            nginx = start_nginx(stack, direct.port, cert)
            if nginx is None:
                print("(nginx not installed: apt-get install nginx; measuring without it)")
            else:
                paths.append(nginx)
        names = [p.name for p in paths]
        print(f"paths: {', '.join(names)}; {args.rounds} interleaved rounds per figure; "
              f"backlog {BACKLOG}; descriptors {descriptors}; "
              f"load average at start {load[0]:.2f}", flush=True)
        values, raw = measure_all(args, paths, cert, lambda m: print(m, flush=True))
    load_end = os.getloadavg()
    nginx_name = names[-1] if names[-1].startswith("nginx") else None
    baseline = names[2] if args.baseline is not None else None
    rows = summarize(values, "wsgate", nginx_name, "direct", baseline)
    print(f"\nwsgate against {nginx_name or '(no nginx)'} and direct; load average "
          f"{load[0]:.2f} at start, {load_end[0]:.2f} at the end\n")
    print_table(rows, names)
    print(f"\nwss:// negotiated: {raw.get('tls_negotiated')} (the client offers only "
          f"{TLS_CIPHER})")
    if "storm_s" in raw:
        served = {name: [r["served"] for r in runs] for name, runs in raw["storm_s"].items()}
        print(f"reconnect storm, clients served per round (of {args.storm}): {served}")
    out = write_results("relay", {
        "args": {**vars(args), "baseline": args.baseline and str(args.baseline)},
        "load_average": {"start": load, "end": load_end},
        "versions": _versions(), "summary": rows, "values": values, "raw": raw})
    print(f"\nwrote {out}")
    plot(rows, names)


def _versions() -> dict[str, str]:
    from bench.paths import NODE_DIR, check_node, nginx_binary

    versions = {"node": subprocess.run([check_node(), "--version"], capture_output=True,
                                       text=True).stdout.strip()}
    lock = NODE_DIR / "node_modules" / "ws" / "package.json"
    if lock.exists():
        import json

        versions["ws"] = json.loads(lock.read_text())["version"]
    if (binary := nginx_binary()) is not None:
        versions["nginx"] = subprocess.run([binary, "-v"], capture_output=True,
                                           text=True).stderr.strip()
    return versions


def plot(rows: list[dict[str, Any]], names: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install -e '.[bench]')")
        return
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    flat = list(axes.flat)
    colors = {"direct": "tab:gray", "wsgate": "tab:blue"}
    for ax, row in zip(flat, rows, strict=False):
        shown = [n for n in names if n in row["median"]]
        ax.bar(shown, [row["median"][n] for n in shown],
               color=[colors.get(n, "tab:orange") for n in shown])
        better = "higher" if row["higher_is_better"] else "lower"
        ratio = row.get("wsgate_vs_nginx")
        ax.set_title(f"{row['title']}\n({row['unit']}, {better} is better"
                     + (f"; wsgate/nginx {ratio:.2f})" if ratio else ")"), fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    last = flat[len(rows)] if len(rows) < len(flat) else flat[-1]
    with_ratio = [r for r in rows if "wsgate_vs_nginx" in r]
    last.barh([r["title"] for r in with_ratio], [r["wsgate_vs_nginx"] for r in with_ratio],
              color=["tab:green" if (r["wsgate_vs_nginx"] >= 1) == r["higher_is_better"]
                     else "tab:red" for r in with_ratio])
    last.axvline(1.0, color="black", linewidth=1)
    last.set_title("wsgate / nginx (median of rounds' ratios)", fontsize=9)
    last.tick_params(axis="y", labelsize=7)
    for ax in flat[len(rows) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    out = RESULTS / "relay.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--tls-handshakes", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--storm", type=int, default=5000)
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also measure wsgate from this checkout (an earlier build)")
    parser.add_argument("--no-nginx", action="store_true")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
