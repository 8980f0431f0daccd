"""A real `redis-server` (Debian's package; `.ci/run` installs it) for the tests, and
peers that only pretend to be one.

The server listens on 127.0.0.1 on a port that was free a moment ago: Redis cannot pick
one itself (`--port 0` switches TCP off), so a taken port makes it exit at once, and
another port is tried. Nothing is persisted (`--save '' --appendonly no`): a restart
comes back empty, as a Redis without persistence does in production.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.certs import TestCA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1; ``stop``/``start``/``restart`` (empty) and
    ``pause``/``resume`` (SIGSTOP: connections are accepted by the kernel and never
    answered)."""

    def __init__(self, password: str | None = None, tls: bool = False) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed: apt-get install redis-server "
                               "(.ci/run does it)")
        self.binary = binary
        self.password = password
        self._tmp = tempfile.TemporaryDirectory(prefix="wsgate-redis-")
        self.dir = Path(self._tmp.name)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca: TestCA | None = None
        if tls:
            self.ca = TestCA("wsgate redis CA")
            leaf = self.ca.issue("127.0.0.1")
            (self.dir / "ca.pem").write_text(self.ca.pem)
            (self.dir / "cert.pem").write_text(leaf.cert_pem)
            (self.dir / "key.pem").write_text(leaf.key_pem)

    @property
    def url(self) -> str:
        if self.ca is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.dir / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, port: int) -> list[str]:
        args = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.ca is not None:
            args += ["--port", "0", "--tls-port", str(port),
                     "--tls-cert-file", str(self.dir / "cert.pem"),
                     "--tls-key-file", str(self.dir / "key.pem"),
                     "--tls-ca-cert-file", str(self.dir / "ca.pem"),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(port)]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (on the same port as before, after a stop), and wait until it serves."""
        for _ in range(5):
            port = self.port or _free_port()
            log = self.dir / "redis.log"
            log.write_text("")
            self.proc = subprocess.Popen(self._args(port), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace")
                if "Ready to accept connections" in text:
                    self.port = port
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            self._kill()
            if "Address already in use" not in log.read_text(errors="replace") or self.port:
                raise RuntimeError(f"redis-server did not start:\n{log.read_text()[-2000:]}")
        raise RuntimeError("redis-server found no free port in 5 tries")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self._kill()

    def restart(self) -> None:
        """Stop and start again on the same port: empty, like a Redis without persistence."""
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (or answers ``reply`` to
    whatever it reads, e.g. garbage): a Redis that hangs, or is not Redis."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            if self.reply is not None:
                writer.write(self.reply)

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
