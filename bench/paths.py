"""The paths bench/relay.py measures, and the independent client that measures them.

Three paths to one upstream, a Node `ws` echo server (bench/node/echo.js):
  - direct: the client to the echo server (ws://, and wss:// served by Node itself);
  - wsgate: `wsgate proxy` with the quickstart's key check (ws:// on --listen, wss:// on
    --tls-listen with a route's certificate);
  - nginx: one worker, the same key check, TLS 1.3 with the same certificate.
The client is a Node `ws` client (bench/node/client.js), run as its own process per
measurement, so neither end of a path is wsgate's code. Every listener here takes a
backlog of 4096 (the kernel caps it at net.core.somaxconn) and every process may hold
20,000 descriptors (or the hard limit, if lower): a reconnect storm is then limited by
what the servers do, not by their queues.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import echo_service, free_port
from tests.certs import TestCA
from wsgate.processes import WsgateProcess

NODE_DIR = Path(__file__).resolve().parent / "node"
KEY = "john-key"
TLS_HOST = "ws.bench.test"
# TLS 1.3 with one cipher suite: the client offers only this one, so every server
# negotiates it (Python's ssl module cannot restrict TLS 1.3 suites on the server).
TLS_CIPHER = "TLS_AES_128_GCM_SHA256"
BACKLOG = 4096
DESCRIPTORS = 20000


@dataclass
class Path_:
    """One path under test: where to connect, and the processes in the middle."""

    name: str
    port: int
    tls_port: int | None
    pids: list[int] = field(default_factory=list)  # empty: nothing in the middle
    upstream_pids: list[int] = field(default_factory=list)  # the echo server (direct only)

    def url(self, tls: bool = False) -> str:
        if tls:
            return f"wss://127.0.0.1:{self.tls_port}/.ws"
        return f"ws://127.0.0.1:{self.port}/.ws"


@dataclass
class Certificate:
    directory: Path
    ca_pem: str

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"


def raise_descriptor_limit() -> int:
    """Let this process and its children hold DESCRIPTORS descriptors (or the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DESCRIPTORS if hard == resource.RLIM_INFINITY else min(DESCRIPTORS, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return max(soft, wanted)


def check_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("bench: Node.js is needed for the load client and the echo upstream "
                         "(apt-get install nodejs npm), then `make bench`")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        raise SystemExit("bench: the Node `ws` package is missing: run `make bench` (or "
                         "`npm ci --prefix bench/node`)")
    return node


def certificate(stack: ExitStack) -> Certificate:
    """A CA and a leaf for TLS_HOST, written where nginx and Node can read them."""
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-tls-")))
    ca = TestCA("wsgate bench CA")
    leaf = ca.issue(TLS_HOST)
    (directory / "tls.crt").write_text(leaf.cert_pem)
    (directory / "tls.key").write_text(leaf.key_pem)
    return Certificate(directory, ca.pem)


def start_echo(stack: ExitStack, cert: Certificate) -> Path_:
    proc = subprocess.Popen(
        [check_node(), str(NODE_DIR / "echo.js"), "0", "0", str(cert.cert), str(cert.key)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    stack.callback(_stop, proc)
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    return Path_("direct", ports["port"], ports["tls_port"], upstream_pids=[proc.pid])


def manifests(directory: Path, echo_port: int, cert: Certificate) -> Path:
    """The quickstart's consumer and key check on two routes to the echo server: /.ws on
    any host (ws://), and /.ws on TLS_HOST with its certificate (wss://)."""
    directory.mkdir(parents=True, exist_ok=True)
    route = {"paths": [{"type": "Prefix", "value": "/.ws"}],
             "backend": {"service": {"name": "echo", "port": 8080}},
             "auth": {"methods": ["KeyAuth"]}}
    objects: list[dict[str, Any]] = [
        *echo_service(echo_port),
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "john-key", "labels": {"wsgate.io/credential": "true"}},
         "stringData": {"key": KEY}},
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsConsumer", "metadata": {"name": "john"},
         "spec": {"credentials": [{"type": "KeyAuth", "secretRef": {"name": "john-key"}}]}},
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "echo"},
         "spec": route},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "bench-tls"},
         "stringData": {"tls.crt": cert.cert.read_text(), "tls.key": cert.key.read_text()}},
        {"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "echo-tls"},
         "spec": {**route, "hosts": [TLS_HOST], "tls": {"secretName": "bench-tls"}}},
    ]
    (directory / "bench.yaml").write_text(yaml.safe_dump_all(objects))
    return directory


def start_wsgate(stack: ExitStack, echo_port: int, cert: Certificate,
                 extra: tuple[str, ...] = (), checkout: Path | None = None) -> Path_:
    """`wsgate proxy` from this tree, or (``checkout``) from another checkout of wsgate,
    an earlier build to compare with: its packages come first on the child's path."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-bench-")))
    env, name = None, "wsgate"
    if checkout is not None:
        env = {"PYTHONPATH": os.pathsep.join(
            str(checkout / p) for p in ("", "proxy", "operator"))}
        name = f"wsgate ({checkout.name})"
    proxy = stack.enter_context(WsgateProcess(
        "proxy", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", "--manifests",
        str(manifests(tmp / "manifests", echo_port, cert)), *extra, env=env, cwd=str(checkout)
        if checkout else None))
    assert proxy.proc is not None
    _wait_ready(proxy.admin_port)
    return Path_(name, proxy.port, proxy.address("tls_listen")[1],
                 _with_children(proxy.proc.pid))


NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile {descriptors};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {descriptors}; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_apikey $key_ok {{ "{key}" 1; default 0; }}
    upstream echo {{ server 127.0.0.1:{upstream}; }}
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        listen 127.0.0.1:{tls_port} ssl backlog={backlog};
        ssl_certificate {cert};
        ssl_certificate_key {cert_key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {cipher};
        location / {{
            if ($key_ok = 0) {{ return 401; }}
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)


def start_nginx(stack: ExitStack, echo_port: int, cert: Certificate) -> Path_ | None:
    binary = nginx_binary()
    if binary is None:
        return None
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgate-nginx-")))
    port, tls_port = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        tmp=tmp, key=KEY, port=port, tls_port=tls_port, upstream=echo_port,
        descriptors=DESCRIPTORS, backlog=BACKLOG, cert=cert.cert, cert_key=cert.key,
        cipher=TLS_CIPHER))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    _wait_port(port)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    return Path_(f"nginx ({version.split('/')[-1]})", port, tls_port,
                 _children(proc.pid))


def client(mode: str, path: Path_, cert: Certificate, tls: bool = False,
           **options: Any) -> dict[str, Any]:
    """Run the Node client once against a path; its JSON result."""
    proc = subprocess.run([check_node(), str(NODE_DIR / "client.js"), mode,
                           json.dumps(_client_options(path, cert, tls, options))],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench client {mode} on {path.name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


class IdleSessions:
    """``total`` sessions held open by the Node client until ``close``."""

    def __init__(self, path: Path_, cert: Certificate, total: int) -> None:
        self.proc = subprocess.Popen(
            [check_node(), str(NODE_DIR / "client.js"), "idle",
             json.dumps(_client_options(path, cert, False, {"total": total}))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(120)


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes together."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _client_options(path: Path_, cert: Certificate, tls: bool,
                    options: dict[str, Any]) -> dict[str, Any]:
    headers = {"apikey": KEY}
    opts: dict[str, Any] = {"url": path.url(tls), "headers": headers, **options}
    if tls:
        headers["host"] = TLS_HOST
        opts["tls"] = {"ca": cert.ca_pem, "servername": TLS_HOST, "ciphers": TLS_CIPHER}
    return opts


def _children(master: int) -> list[int]:
    """nginx's worker process, where the sessions live."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = _child_pids(master)
        if found:
            return found
        time.sleep(0.05)
    return [master]


def _with_children(pid: int) -> list[int]:
    return [pid, *_child_pids(pid)]


def _child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def _wait_ready(admin_port: int) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise TimeoutError("wsgate proxy did not become ready")
