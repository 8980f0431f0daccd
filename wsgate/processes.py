"""Running `wsgate` commands as child processes, for the demo, tests and benchmarks.

A child listens on the address it is given (port 0 for a free one) and reports the
address it bound in a structured log line, which is read here; so callers never
guess ports. The child's log goes to a file that is polled, not to a pipe read by a
thread, so a benchmark's load client has its process to itself. Every child is
stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

LogRecord = dict[str, Any]
POLL_SECONDS = 0.02


class ProcessFailed(RuntimeError):
    pass


class WsgateProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, name: str = "",
                 python: str = sys.executable, cwd: str | None = None) -> None:
        self.args = list(args)
        self.python, self.cwd = python, cwd
        self.name = name or next(a for a in args if not a.startswith("-"))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.records: list[LogRecord] = []
        self.other_output: list[str] = []
        self._log: IO[bytes] | None = None
        self._read_offset = 0
        self._partial = b""

    def start(self, timeout: float = 15.0) -> WsgateProcess:
        """Start, and wait until the child reports the addresses it listens on."""
        self.start_without_waiting()
        self.wait_for_log(lambda r: r.get("event") == "listening", timeout)
        return self

    def start_without_waiting(self) -> WsgateProcess:
        """Start a child that reports no listening address (the operator)."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [self.python, "-m", "wsgate", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
        )
        return self

    def _read_new(self) -> None:
        if self._log is None:
            return
        chunk = os.pread(self._log.fileno(), 1 << 20, self._read_offset)
        if not chunk:
            return
        self._read_offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            try:
                self.records.append(json.loads(text))
            except ValueError:
                self.other_output.append(text)

    def wait_for_log(self, predicate: Callable[[LogRecord], bool], timeout: float = 10.0,
                     since: int = 0) -> LogRecord:
        """The first log record (from index ``since``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            self._read_new()
            for record in self.records[checked:]:
                if predicate(record):
                    return record
            checked = max(checked, len(self.records))
            if self.proc is not None and self.proc.poll() is not None:
                self._read_new()
                raise ProcessFailed(f"wsgate {self.name} exited ({self.proc.returncode})\n"
                                    + self.output())
            if time.monotonic() > deadline:
                raise TimeoutError(f"wsgate {self.name}: no matching log line within "
                                   f"{timeout}s\n" + self.output())
            time.sleep(POLL_SECONDS)

    def log_records(self) -> list[LogRecord]:
        """Every structured log record the child has written so far."""
        self._read_new()
        return list(self.records)

    def output(self) -> str:
        self._read_new()
        lines = [json.dumps(r) for r in self.records] + self.other_output
        return "\n".join(lines[-60:])

    def address(self, field: str = "listen") -> tuple[str, int]:
        record = self.wait_for_log(lambda r: r.get("event") == "listening")
        host, _, port = record[field].rpartition(":")
        return host, int(port)

    @property
    def port(self) -> int:
        return self.address()[1]

    @property
    def admin_port(self) -> int:
        return self.address("admin_listen")[1]

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._read_new()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> WsgateProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
