"""The `wsgate` command: `proxy`, `echo` and `compile`.

This is where the components meet: standalone mode hands the operator's compiler
output to the proxy's runtime through a callback, so neither package imports the
other beyond the config contract.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import logs

if TYPE_CHECKING:
    from wsgate_proxy.leases import StoreOptions

TOKEN_ENV = "WSGATE_ADMIN_TOKEN"
REDIS_URL_ENV = "WSGATE_LIMITS_REDIS_URL"


def host_port(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT'; port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number above zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def read_token(path: Path | None) -> str | None:
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise SystemExit(
                f"wsgate: cannot read --admin-token-file {path}: {exc.strerror}"
            ) from None
        if not token:
            raise SystemExit(f"wsgate: --admin-token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="wsgate", description="A Kubernetes ingress controller for WebSocket traffic."
    )
    root.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    proxy = commands.add_parser("proxy", help="run the proxy")
    proxy.add_argument("--listen", type=host_port, default=("0.0.0.0", 9080),
                       help="where clients connect (default 0.0.0.0:9080)")
    proxy.add_argument("--tls-listen", type=host_port, metavar="HOST:PORT",
                       help="also serve wss:// here, with the routes' certificates (by SNI)")
    proxy.add_argument("--admin-listen", type=host_port, default=("0.0.0.0", 9901),
                       help="admin API: config, probes, metrics (default 0.0.0.0:9901)")
    proxy.add_argument("--manifests", type=Path, metavar="DIR",
                       help="standalone mode: serve the manifests under DIR, reloading on change")
    proxy.add_argument("--admin-token-file", type=Path, metavar="FILE",
                       help=f"bearer token for config writes (else ${TOKEN_ENV})")
    proxy.add_argument("--drain-seconds", type=float, default=10.0, metavar="SECONDS",
                       help="on SIGTERM: stop accepting, let live sessions run this long, "
                            "then close them with 1001 (default 10)")
    proxy.add_argument("--state-dir", type=Path, metavar="DIR",
                       help="keep the last good config here (mode 0600, in a 0700 "
                            "directory) and serve it at start")
    limits = proxy.add_argument_group("limits (README: Limits and timeouts)")
    limits.add_argument("--head-timeout", type=positive(float), default=5.0, metavar="SECONDS",
                        help="time from a request head's first byte to its last; then 408 "
                             "and close (default 5)")
    limits.add_argument("--max-head-bytes", type=positive(int), default=64 * 1024,
                        metavar="BYTES", help="size of a whole request head; beyond, 431 and "
                                              "close (default 65536)")
    limits.add_argument("--keepalive-timeout", type=positive(float), default=15.0,
                        metavar="SECONDS", help="an open connection with no request under "
                                                "way is closed after this long (default 15)")
    limits.add_argument("--backlog", type=positive(int), default=4096, metavar="N",
                        help="connections accepted by the kernel and not yet by the proxy, "
                             "per listener: a reconnect storm beyond it waits for SYN "
                             "retries (default 4096; the kernel caps it at "
                             "net.core.somaxconn)")
    limits.add_argument("--password-queue", type=positive(int), default=32, metavar="N",
                        help="BasicAuth password checks waiting or running at once; beyond, "
                             "503 with Retry-After (default 32)")
    shared = proxy.add_argument_group(
        "shared connection limits", "count maxConnections and maxConnectionsPerConsumer (and a "
        "consumer's maxConnections) across every proxy that shares a Redis; without "
        "--limits-redis-url each proxy counts its own sessions")
    shared.add_argument("--limits-redis-url", metavar="URL",
                        help="redis://[USER[:PASSWORD]@]HOST[:PORT][/DB] or rediss://... "
                             f"(else ${REDIS_URL_ENV})")
    shared.add_argument("--limits-redis-password-file", type=Path, metavar="FILE",
                        help="the Redis password (over the URL's)")
    shared.add_argument("--limits-redis-failure", choices=["open", "closed"], default="open",
                        help="while Redis is unavailable: open (default) counts per proxy; "
                             "closed refuses handshakes on routes with connection limits "
                             "(503). Live sessions are never closed either way")
    shared.add_argument("--limits-lease-seconds", type=positive(float), default=30.0,
                        metavar="SECONDS",
                        help="how long the sessions of a proxy that stopped renewing (killed) "
                             "keep counting (default 30)")
    shared.add_argument("--limits-renew-seconds", type=positive(float), default=10.0,
                        metavar="SECONDS",
                        help="how often a proxy renews its leases, in one round trip; at most "
                             "half the lease time (default 10)")
    shared.add_argument("--limits-redis-timeout", type=positive(float), default=0.25,
                        metavar="SECONDS",
                        help="the longest a handshake waits on Redis before the failure mode "
                             "applies (default 0.25)")

    echo = commands.add_parser("echo", help="run a WebSocket echo upstream (demos, tests)")
    echo.add_argument("--listen", type=host_port, default=("127.0.0.1", 9001))
    echo.add_argument("--id", dest="server_id", metavar="NAME",
                      help="name in the greeting (default: the hostname)")

    operator = commands.add_parser("operator", help="run the operator (kopf)")
    operator.add_argument("--namespace", action="append", default=[], dest="namespaces",
                          metavar="NS", help="watch this namespace (repeatable; default: all)")
    operator.add_argument("--proxy-selector", required=True, metavar="LABELSELECTOR",
                          help="labels of the proxy pods, e.g. app.kubernetes.io/name=wsgate-proxy")
    operator.add_argument("--proxy-namespace", required=True, metavar="NS",
                          help="the namespace of the proxy pods")
    operator.add_argument("--proxy-admin-port", type=int, default=9901, metavar="PORT",
                          help="the proxies' admin port (default 9901)")
    operator.add_argument("--admin-token-file", type=Path, metavar="FILE",
                          help=f"bearer token for pushing configs (else ${TOKEN_ENV})")
    operator.add_argument("--health-listen", type=host_port, metavar="HOST:PORT",
                          help="serve kopf's liveness probe at http://HOST:PORT/healthz")
    operator.add_argument("--metrics-listen", type=host_port, metavar="HOST:PORT",
                          help="serve Prometheus metrics at http://HOST:PORT/metrics")

    compile_ = commands.add_parser(
        "compile", help="print the config compiled from a manifest directory, as pushed"
    )
    compile_.add_argument("directory", type=Path, metavar="DIR")
    compile_.add_argument("--follow", action="store_true",
                          help="keep compiling as the manifests change, and speak to the "
                               "proxy on stdin/stdout (how `wsgate proxy --manifests DIR` "
                               "runs its compiler)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(args.log_level)
    if args.command == "compile" and args.follow:
        from wsgate_operator.standalone import follow

        run(lambda stop: follow(args.directory, stop))
        return 0
    if args.command == "compile":
        return compile_command(args.directory)
    if args.command == "echo":
        from .echo import serve as serve_echo

        run(lambda stop: serve_echo(args.listen, args.server_id, stop))
        return 0
    if args.command == "proxy":
        return proxy_command(args)
    if args.command == "operator":
        return operator_command(args)
    raise AssertionError(args.command)


def operator_command(args: argparse.Namespace) -> int:
    from wsgate_operator.main import run_operator, serve_metrics
    from wsgate_operator.metrics import OperatorMetrics
    from wsgate_operator.options import OperatorOptions, parse_selector

    token = read_token(args.admin_token_file)
    if not token:
        raise SystemExit(f"wsgate operator: no admin token: give --admin-token-file or "
                         f"${TOKEN_ENV} (the same token the proxies have)")
    try:
        selector = parse_selector(args.proxy_selector)
    except ValueError as exc:
        raise SystemExit(f"wsgate operator: --proxy-selector {exc}") from None
    options = OperatorOptions(namespaces=args.namespaces, proxy_selector=selector,
                              proxy_namespace=args.proxy_namespace,
                              proxy_admin_port=args.proxy_admin_port, admin_token=token)
    metrics = OperatorMetrics()
    if args.metrics_listen:
        serve_metrics(args.metrics_listen, metrics)
    liveness = None
    if args.health_listen:
        host, port = args.health_listen
        liveness = f"http://{host}:{port}/healthz"
    run(lambda stop: run_operator(options, stop, liveness=liveness, metrics=metrics))
    return 0


def proxy_command(args: argparse.Namespace) -> int:
    from wsgate_proxy.listener import HeadLimits
    from wsgate_proxy.server import ProxyOptions, serve

    options = ProxyOptions(
        listen=args.listen,
        admin_listen=args.admin_listen,
        admin_token=read_token(args.admin_token_file),
        drain_seconds=args.drain_seconds,
        state_dir=args.state_dir,
        tls_listen=args.tls_listen,
        heads=HeadLimits(timeout_seconds=args.head_timeout, max_bytes=args.max_head_bytes,
                         keepalive_seconds=args.keepalive_timeout),
        password_queue=args.password_queue,
        backlog=args.backlog,
        limits_store=store_options(args),
    )
    source = None
    if args.manifests is not None:
        # The compiler runs in a child process of its own (compiler_child.py).
        from wsgate_proxy.compiler_child import run_compiler

        command = [sys.executable, "-m", "wsgate", "--log-level", args.log_level, "compile",
                   str(args.manifests.absolute()), "--follow"]
        source = lambda target: run_compiler(command, target)  # noqa: E731
    run(lambda stop: serve(options, stop, source))
    return 0


def store_options(args: argparse.Namespace) -> StoreOptions | None:
    """The shared limits store's options, or None (per-proxy counting)."""
    from wsgate_proxy.leases import StoreOptions, read_password

    url = args.limits_redis_url or os.environ.get(REDIS_URL_ENV)
    if not url:
        if args.limits_redis_password_file is not None:
            raise SystemExit("wsgate proxy: --limits-redis-password-file needs "
                             "--limits-redis-url")
        return None
    try:
        password = (read_password(args.limits_redis_password_file)
                    if args.limits_redis_password_file is not None else None)
        return StoreOptions(url, password=password, failure=args.limits_redis_failure,
                            lease_seconds=args.limits_lease_seconds,
                            renew_seconds=args.limits_renew_seconds,
                            timeout_seconds=args.limits_redis_timeout)
    except ValueError as exc:
        raise SystemExit(f"wsgate proxy: {exc}") from None


def compile_command(directory: Path) -> int:
    from wsgate_operator.manifests import compile_directory

    result = compile_directory(directory)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if result.errors:
        for line in result.errors:
            print(f"error: {line}", file=sys.stderr)
        return 1
    assert result.compiled is not None
    print(json.dumps(result.compiled.config.model_dump(mode="json"), indent=2))
    return 0


def run(make: Any) -> None:
    """Run ``make(stop_event)`` on uvloop (where available) until SIGTERM/SIGINT."""

    async def main_task() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        coroutine: Coroutine[Any, Any, None] = make(stop)
        await coroutine

    try:
        import uvloop
    except ImportError:
        asyncio.run(main_task())
    else:
        uvloop.run(main_task())


if __name__ == "__main__":
    sys.exit(main())
