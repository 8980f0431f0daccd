"""Standalone mode's compiler, run as a child process of the proxy.

The child (`wsgate compile DIR --follow`, wsgate_operator/standalone.py) reads and
compiles the manifests and sends only what changed, as a config stream: the body an
operator pushes, parsed and applied here a slice at a time. Compiling ten thousand
consumers holds an interpreter for seconds; a thread would share this process's
interpreter lock with the event loop (live sessions then wait their turn), a child
holds only its own. The conversation (config_stream.py): the proxy says the version
it runs at start and after each message; the child sends a change (a delta from that
version when it is the child's own, else the whole config) or the errors that refuse
the set (reported at /readyz; the last good config stays).

The child ends when the proxy does, however it ends (its stdin closes); the proxy
starts it again when it exits, after a pause that doubles while it keeps failing,
with the last good config in force and /readyz saying why meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import config_stream
from .config_stream import StreamError
from .runtime import ConfigMismatch

if TYPE_CHECKING:
    from .server import ConfigTarget

log = logging.getLogger("wsgate.standalone")

RESTART_SECONDS = 1.0
MAX_RESTART_SECONDS = 30.0
# A child that ran this long before it exited is restarted after the shortest pause.
HEALTHY_SECONDS = 60.0
# On stop: SIGTERM, then SIGKILL after this long.
STOP_SECONDS = 5.0
# The longest message line (a refusal lists at most 50 errors).
MAX_LINE_BYTES = 1 << 20


class ProtocolError(ValueError):
    """The child said something that is not part of the conversation."""


async def run_compiler(command: Sequence[str], target: ConfigTarget) -> None:
    """Run ``command`` (the compiler) and apply what it sends; restart it when it exits.
    Returns only when cancelled (the child is stopped then)."""
    pause = RESTART_SECONDS
    while True:
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=MAX_LINE_BYTES)
        log.info("manifest compiler started", extra={"pid": child.pid})
        try:
            await _converse(child, target)
        except (ProtocolError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError) as exc:
            log.error("the manifest compiler broke the conversation; restarting it",
                      extra={"pid": child.pid, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            await _stop(child)
        if time.monotonic() - started >= HEALTHY_SECONDS:
            pause = RESTART_SECONDS
        log.error("the manifest compiler exited; restarting it",
                  extra={"pid": child.pid, "code": child.returncode, "restart_in_s": pause})
        target.report([f"the manifest compiler exited (code {child.returncode}); it is "
                       f"restarted in {pause:g}s; the last good config stays in force"])
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_RESTART_SECONDS)


async def _converse(child: asyncio.subprocess.Process, target: ConfigTarget) -> None:
    """Apply what the child sends until it ends."""
    assert child.stdin is not None
    assert child.stdout is not None
    stdin, stdout = child.stdin, child.stdout
    while True:
        stdin.write(config_stream.frame_version(target.version()))
        await stdin.drain()
        line = await stdout.readline()
        if not line:
            return  # it exited
        try:
            message = json.loads(line)
        except ValueError:
            raise ProtocolError(f"not a message: {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"not a message: {line[:200]!r}")
        if isinstance(message.get("refused"), list):
            target.report([str(error) for error in message["refused"]])
        elif isinstance(message.get("change"), int) and message["change"] >= 0:
            await _apply(await stdout.readexactly(message["change"]), target)
        else:
            raise ProtocolError(f"not a message: {line[:200]!r}")


async def _apply(body: bytes, target: ConfigTarget) -> None:
    try:
        await target.apply(body)
    except ConfigMismatch:
        return  # the child learns the version running, and sends the whole config
    except StreamError as exc:
        raise ProtocolError(f"the compiler sent an invalid config stream: {exc}") from None
    target.report([])


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        await asyncio.wait_for(child.wait(), STOP_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
