"""Standalone mode: compile a manifest directory and keep serving it as it changes.

The same compiler the operator runs, fed from files instead of the API. A set that
does not compile cleanly is refused whole and the last good config stays in force,
so a half-edited file never takes routes away. The watcher outlives anything a file
can do to it: every load is guarded, each failure is logged and reported (the
proxy's /readyz shows why it is not ready), and the next change is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from wsgate_proxy.config import GatewayConfig

from .manifests import MANIFEST_SUFFIXES, compile_directory

log = logging.getLogger("wsgate.standalone")

ApplyConfig = Callable[[GatewayConfig], object]
# Told the errors of the last load ([] when it applied).
ReportErrors = Callable[[list[str]], None]
# How long the watcher waits before watching again after watching itself failed.
REWATCH_SECONDS = 1.0


async def load_once(directory: Path, apply: ApplyConfig,
                    report: ReportErrors = lambda errors: None) -> bool:
    """Compile the directory (in a thread: a large set takes a while) and apply it;
    False, with the errors logged and reported, when it is refused."""
    try:
        result = await asyncio.to_thread(compile_directory, directory)
        errors = result.errors
        for warning in result.warnings:
            log.warning("manifest problem", extra={"problem": warning})
        if not errors:
            assert result.compiled is not None
            apply(result.compiled.config)
    except Exception as exc:  # a bug must not end the watcher: say so, keep serving
        log.exception("manifests could not be loaded", extra={"directory": str(directory)})
        errors = [f"{directory}: could not be loaded ({type(exc).__name__}: {exc})"]
    report(errors)
    if errors:
        for error in errors:
            log.error("invalid manifest", extra={"problem": error})
        log.error(
            "manifests refused; the last good config stays in force",
            extra={"directory": str(directory), "errors": len(errors)},
        )
        return False
    return True


async def watch(directory: Path, apply: ApplyConfig,
                report: ReportErrors = lambda errors: None) -> None:
    """Load now, then again whenever a manifest under the directory changes."""
    await load_once(directory, apply, report)
    while True:
        try:
            async for _changes in watchfiles.awatch(
                directory, watch_filter=_is_manifest, debounce=200, step=50
            ):
                await load_once(directory, apply, report)
        except Exception:  # the directory vanished, inotify ran out: watch again
            log.exception("watching the manifests failed; watching again",
                          extra={"directory": str(directory)})
        await asyncio.sleep(REWATCH_SECONDS)
        await load_once(directory, apply, report)


def _is_manifest(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES) and not Path(path).name.startswith(".")
