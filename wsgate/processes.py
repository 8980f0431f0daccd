"""Running `wsgate` commands as child processes, for the demo, tests and benchmarks.

A child listens on the address it is given (port 0 for a free one) and reports the
address it bound in its first structured log line, which is read here; so callers
never guess ports. Every child is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

LogRecord = dict[str, Any]


class ProcessFailed(RuntimeError):
    pass


class WsgateProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, name: str = "") -> None:
        self.args = list(args)
        self.name = name or args[0]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.records: list[LogRecord] = []
        self.other_output: list[str] = []
        self._changed = threading.Condition()

    def start(self, timeout: float = 15.0) -> WsgateProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wsgate", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for_log(lambda r: r.get("event") == "listening", timeout)
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                try:
                    self.records.append(json.loads(line))
                except ValueError:
                    self.other_output.append(line.rstrip())
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, predicate: Callable[[LogRecord], bool], timeout: float = 10.0,
                     since: int = 0) -> LogRecord:
        """The first log record (from index ``since``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records[since:]:
                    if predicate(record):
                        return record
                if self.proc is not None and self.proc.poll() is not None:
                    raise ProcessFailed(f"wsgate {self.name} exited ({self.proc.returncode})\n"
                                        + self.output())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"wsgate {self.name}: no matching log line within "
                                       f"{timeout}s\n" + self.output())
                self._changed.wait(min(remaining, 0.2))

    def output(self) -> str:
        with self._changed:
            lines = [json.dumps(r) for r in self.records] + self.other_output
        return "\n".join(lines[-40:])

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
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> WsgateProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
