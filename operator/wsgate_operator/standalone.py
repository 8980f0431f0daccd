"""Standalone mode: compile a manifest directory and keep serving it as it changes.

The same compiler the operator runs, fed from files instead of the API, and kept
across loads: a change re-reads only the files that changed (manifests.FileCache),
compiles again only the objects that changed and what depends on them, and hands the
proxy only the items that changed (a delta, applied a slice at a time), all off the
event loop but the last step. A set that does not compile cleanly is refused whole
and the last good config stays in force, so a half-edited file never takes routes
away. The watcher outlives anything a file can do to it: every load is guarded, each
failure is logged and reported (the proxy's /readyz shows why it is not ready), and
the next change is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from wsgate_proxy.config_stream import ConfigChange
from wsgate_proxy.runtime import ConfigMismatch

from .compiler import Compiled
from .compiler.build import Compiler
from .compiler.compiled import ItemKey
from .manifests import MANIFEST_SUFFIXES, FileCache, ManifestCompilation, load_manifests

log = logging.getLogger("wsgate.standalone")

# Swaps a change in; False when it is the version already running. Raises
# ConfigMismatch when the change does not start from the version running.
ApplyChange = Callable[[ConfigChange], Awaitable[bool]]
# Told the errors of the last load ([] when it applied).
ReportErrors = Callable[[list[str]], None]
# How long the watcher waits before watching again after watching itself failed.
REWATCH_SECONDS = 1.0


class ManifestSource:
    """A directory's manifests, compiled and kept up to date load after load."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.reset()

    def reset(self) -> None:
        """Forget everything read and compiled: the next load reads and sends it whole."""
        self._files = FileCache()
        self._compiler = Compiler()
        self._applied: str | None = None  # the version last applied
        self._pending: set[ItemKey] = set()  # items changed since then

    def compile(self) -> ManifestCompilation:
        """Read what changed and compile it (in a thread: only the loader touches this)."""
        manifests = load_manifests(self.directory, self._files)
        if manifests.errors:
            return ManifestCompilation(manifests, None)
        self._compiler.sync(manifests.snapshot)
        compiled = self._compiler.result()
        self._pending |= compiled.changed_items
        return ManifestCompilation(manifests, compiled)

    def change(self, compiled: Compiled, whole: bool) -> ConfigChange:
        """What brings the proxy from the version last applied to ``compiled``."""
        base = None if whole or self._applied is None else self._applied
        keys = [(kind, key) for kind, items in compiled.items.items() for key in items] \
            if base is None else self._pending
        change = ConfigChange(compiled.version, base)
        for kind, key in keys:
            item = compiled.items[kind].get(key)
            if item is None:
                change.removed[kind].add(key)
            else:
                change.set[kind][key] = item
                change.digests[(kind, key)] = compiled.encoded[(kind, key)][1]
        return change

    def applied(self, compiled: Compiled) -> None:
        self._applied = compiled.version
        self._pending.clear()


async def load_once(source: ManifestSource, apply: ApplyChange,
                    report: ReportErrors = lambda errors: None) -> bool:
    """Compile what changed (in a thread: a large set takes a while) and apply it;
    False, with the errors logged and reported, when it is refused."""
    directory = source.directory
    try:
        result = await asyncio.to_thread(source.compile)
        errors = result.errors
        for warning in result.warnings:
            log.warning("manifest problem", extra={"problem": warning})
        if not errors:
            assert result.compiled is not None
            try:
                await apply(source.change(result.compiled, whole=False))
            except ConfigMismatch:  # the proxy runs something else (a push): send it whole
                await apply(source.change(result.compiled, whole=True))
            source.applied(result.compiled)
    except Exception as exc:  # a bug must not end the watcher: say so, keep serving
        log.exception("manifests could not be loaded", extra={"directory": str(directory)})
        errors = [f"{directory}: could not be loaded ({type(exc).__name__}: {exc})"]
        source.reset()  # start afresh next time
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


async def watch(directory: Path, apply: ApplyChange,
                report: ReportErrors = lambda errors: None) -> None:
    """Load now, then again whenever a manifest under the directory changes."""
    source = ManifestSource(directory)
    await load_once(source, apply, report)
    while True:
        try:
            async for _changes in watchfiles.awatch(
                directory, watch_filter=_is_manifest, debounce=200, step=50
            ):
                await load_once(source, apply, report)
        except Exception:  # the directory vanished, inotify ran out: watch again
            log.exception("watching the manifests failed; watching again",
                          extra={"directory": str(directory)})
        await asyncio.sleep(REWATCH_SECONDS)
        await load_once(source, apply, report)


def _is_manifest(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES) and not Path(path).name.startswith(".")
