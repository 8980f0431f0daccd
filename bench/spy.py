"""What a proxy was running while a round trip was slow: py-spy records each proxy as a
timeline (``--format chrometrace``, every thread, idle ones included) and, for a window
of time, names the frames that covered most of it in each thread.

The trace's timestamps count from py-spy's own start, which this module takes as the
moment it launched py-spy (a few ms early at most: py-spy's start-up before its clock
starts); a window is widened by ALIGNMENT_SECONDS on each side to absorb that.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

RATE = 200
ALIGNMENT_SECONDS = 0.005
# Per thread, the stacks named for a window (the heaviest first), and their frames shown
# (the innermost).
SHOWN = 2
DEPTH = 4


@dataclass
class Segment:
    """A stretch of time (seconds from the trace's start) one thread spent in one stack."""

    start: float
    end: float
    stack: tuple[str, ...]  # outermost first


class Trace:
    """One process's recorded stacks, by thread, as segments of time."""

    def __init__(self, path: Path, launched: float) -> None:
        self.launched = launched
        self.threads: dict[int, list[Segment]] = defaultdict(list)
        stacks: dict[int, list[str]] = defaultdict(list)
        since: dict[int, float] = {}
        for event in json.loads(path.read_text()):
            tid, ts = event["tid"], event["ts"] / 1e6
            if stacks[tid] and ts > since[tid]:
                self.threads[tid].append(Segment(since[tid], ts, tuple(stacks[tid])))
            since[tid] = ts
            if event["ph"] == "B":
                filename = event["args"]["filename"]
                stacks[tid].append(
                    f"{event['name']} ({Path(filename).name}:{event['args']['line']})"
                    if filename else event["name"])
            elif event["ph"] == "E" and stacks[tid]:
                stacks[tid].pop()

    def held(self, start: float, end: float) -> dict[str, list[tuple[float, tuple[str, ...]]]]:
        """For each thread in the window [start, end] (perf_counter seconds), by name, the
        stacks it spent most of the window in (the heaviest first) with their shares. A
        loop thread waiting for events ends in ``Runner.run``: uvloop's wait is C."""
        low = start - self.launched - ALIGNMENT_SECONDS
        high = end - self.launched + ALIGNMENT_SECONDS
        found = {}
        for segments in self.threads.values():
            spent: dict[tuple[str, ...], float] = defaultdict(float)
            for segment in segments:
                overlap = min(segment.end, high) - max(segment.start, low)
                if overlap > 0:
                    spent[segment.stack] += overlap
            heaviest = sorted(spent.items(), key=lambda item: -item[1])[:SHOWN]
            if heaviest:
                # py-spy's --threads makes the thread its stack's outermost frame.
                thread = heaviest[0][0][0].split(": ", 1)[-1]
                found[thread] = [(share / (high - low), stack[1:]) for stack, share in heaviest]
        return found


def described(held: dict[str, list[tuple[float, tuple[str, ...]]]]) -> dict[str, str]:
    """``Trace.held``'s answer as a line per thread, innermost frames only."""
    return {thread: "; ".join(f"{share:.0%} {' > '.join(stack[-DEPTH:])}"
                              for share, stack in stacks)
            for thread, stacks in held.items()}


def binary() -> str:
    """py-spy (PyPI ``py-spy``): on the PATH or in this interpreter's environment."""
    found = shutil.which("py-spy") or Path(sys.executable).parent / "py-spy"
    if not Path(found).exists():
        raise RuntimeError("--spy needs py-spy: pip install py-spy")
    return str(found)


class Recording:
    """py-spy recording some processes while the block runs; ``traces`` afterwards."""

    def __init__(self, pids: list[int], directory: Path, label: str) -> None:
        self.pids, self.directory, self.label = pids, directory, label
        # By process, as given; None where py-spy recorded nothing (it said why).
        self.traces: list[Trace | None] = []
        # Each trace's file and when its py-spy was launched (time.perf_counter()).
        self.recorded: list[tuple[Path, float]] = []
        self._running: list[tuple[subprocess.Popen[bytes], Path, float]] = []

    def __enter__(self) -> Recording:
        spy = binary()
        self.directory.mkdir(parents=True, exist_ok=True)
        for n, pid in enumerate(self.pids):
            path = self.directory / f"{self.label}-proxy-{n}.trace.json"
            launched = time.perf_counter()
            process = subprocess.Popen(
                [spy, "record", "--idle", "--threads", "--nonblocking", "--rate", str(RATE),
                 "--format", "chrometrace", "--output", str(path), "--pid", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._running.append((process, path, launched))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # py-spy writes its file when interrupted, as on Ctrl-C.
        for process, _path, _launched in self._running:
            process.send_signal(signal.SIGINT)
        for process, path, launched in self._running:
            _, errors = process.communicate(timeout=60)
            if path.exists():
                self.traces.append(Trace(path, launched))
                self.recorded.append((path, launched))
            else:
                print(f"  py-spy recorded nothing: {errors.decode(errors='replace')[-500:]}")
                self.traces.append(None)
