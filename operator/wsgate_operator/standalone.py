"""Standalone mode's compiler: a manifest directory compiled and kept up to date, in a
process of its own beside the proxy (`wsgate compile DIR --follow`, which `wsgate proxy
--manifests DIR` starts and restarts: wsgate_proxy/compiler_child.py).

The same compiler the operator runs, fed from files instead of the API, and kept
across loads: a change re-reads only the files that changed (manifests.FileCache),
compiles again only the objects that changed and what depends on them, and hands the
proxy only the items that changed (a config stream, the body an operator pushes,
applied there a slice at a time). Compiling ten thousand consumers holds an interpreter
for seconds: here it never holds the proxy's. A set that does not compile cleanly is
refused whole and the last good config stays in force, so a half-edited file never
takes routes away. The watcher outlives anything a file can do to it: every load is
guarded, each failure is logged and reported (the proxy's /readyz shows why), and the
next change is loaded again. It ends when the proxy does (its stdin closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import watchfiles

from wsgate_proxy import config_stream

from .compiler import Compiled
from .compiler.build import Compiler
from .compiler.compiled import ItemKey
from .compiler.objects import ObjectRef
from .manifests import (
    MANIFEST_SUFFIXES,
    FileCache,
    ManifestCompilation,
    ManifestSet,
    file_objects,
    manifest_files,
)

log = logging.getLogger("wsgate.standalone")

# Sends a config stream to the proxy and says the version the proxy runs after it (the
# stream's own when it applied).
Send = Callable[[bytes], Awaitable[str | None]]
# Tells the proxy the errors of the last load (sent only when there are some).
ReportErrors = Callable[[list[str]], Awaitable[None]]
# How long the watcher waits before watching again after watching itself failed.
REWATCH_SECONDS = 1.0
# The watcher yields (nothing) after this long without changes: its first yield says it
# is set up, and a load then catches what changed before it was.
WATCH_TIMEOUT_MS = 1000
# A change is loaded once no other came for this long (a rename lands as one event; an
# editor's writes come within a few ms), at most 200 ms after the first. The watcher
# looks every STEP_MS: a change waits one to two steps before its load starts.
STEP_MS = 10
# How much lower than its proxy's the compiler's scheduling priority is.
NICENESS = 10
# The proxy's /readyz lists 20; a few more say there are more.
MAX_SENT_ERRORS = 50
# The oldest generation's collection threshold while full collections are held off.
NEVER = 1 << 30


class ManifestSource:
    """A directory's manifests, compiled and kept up to date load after load: a load
    reads again only the files that changed and hands the compiler only their objects,
    so a change costs what changed, not the ten thousand objects around it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.reset()

    def reset(self) -> None:
        """Forget everything read and compiled: the next load reads and sends it whole."""
        self._files = FileCache()
        self._compiler = Compiler()
        # Each file's last read, its objects and what is wrong with it.
        self._read: dict[Path, tuple[object, list[tuple[ObjectRef, dict, str]], list[str]]] = {}
        # Every object's definitions, by file order (more than one: a duplicate).
        self._defined: dict[ObjectRef, list[tuple[Path, dict, str]]] = {}
        self._sources: dict[ObjectRef, str] = {}  # where each object is (its first definition)
        self._duplicates: set[ObjectRef] = set()
        # Files changed since the compiler last took them, and the objects it took from each.
        self._dirty: set[Path] = set()
        self._fed: dict[Path, set[ObjectRef]] = {}
        self._applied: str | None = None  # the version the proxy runs, when it is ours
        self._pending: set[ItemKey] = set()  # items changed since then

    def compile(self) -> ManifestCompilation:
        """Read what changed and compile it."""
        manifests = ManifestSet()
        if not self.directory.is_dir():
            manifests.errors.append(f"{self.directory}: not a directory")
            return ManifestCompilation(manifests, None)
        paths = manifest_files(self.directory)
        self._files.keep_only(paths)
        for path in self._read.keys() - set(paths):
            self._forget(path)
        for path in paths:
            found = self._files.read(path)
            if path not in self._read or self._read[path][0] is not found:
                self._forget(path)
                objects, errors = file_objects(found)
                self._read[path] = (found, objects, found.errors + errors)
                for ref, obj, where in objects:
                    definitions = self._defined.setdefault(ref, [])
                    definitions.append((path, obj, where))
                    definitions.sort(key=lambda d: d[0])
                    self._touched(ref)
        for path in paths:
            manifests.errors += self._read[path][2]
        for ref in sorted(self._duplicates):
            first, *others = self._defined[ref]
            manifests.errors += [f"{where}: {ref} is also defined in {first[2]}"
                                 for _path, _obj, where in others]
        manifests.sources = self._sources
        if manifests.errors:
            return ManifestCompilation(manifests, None)
        changes: dict[ObjectRef, dict | None] = {}
        for path in self._dirty:
            now = {ref for ref, _obj, _where in self._read[path][1]} if path in self._read \
                else set()
            for ref in self._fed.pop(path, set()) | now:
                definitions = self._defined.get(ref)
                changes[ref] = definitions[0][1] if definitions else None
            if now:
                self._fed[path] = now
        self._dirty.clear()
        self._compiler.update(changes)
        compiled = self._compiler.result()
        self._pending |= compiled.changed_items
        return ManifestCompilation(manifests, compiled)

    def _forget(self, path: Path) -> None:
        """Take a file's objects out (it changed or is gone)."""
        self._dirty.add(path)
        read = self._read.pop(path, None)
        for ref, _obj, _where in read[1] if read is not None else ():
            definitions = [d for d in self._defined.get(ref, ()) if d[0] != path]
            if definitions:
                self._defined[ref] = definitions
            else:
                self._defined.pop(ref, None)
            self._touched(ref)

    def _touched(self, ref: ObjectRef) -> None:
        """An object's definitions changed: where it comes from, whether it is a duplicate."""
        definitions = self._defined.get(ref, ())
        if definitions:
            self._sources[ref] = definitions[0][2]
        else:
            self._sources.pop(ref, None)
        if len(definitions) > 1:
            self._duplicates.add(ref)
        else:
            self._duplicates.discard(ref)

    def stream(self, compiled: Compiled, running: str | None) -> bytes:
        """The config stream that brings a proxy running ``running`` to ``compiled``:
        what changed since the version last applied when it runs that one, else whole."""
        encoded = compiled.encoded
        if running == compiled.version:  # nothing to carry (a restarted compiler, say)
            return config_stream.encode(compiled.version, running, [])
        if running is None or running != self._applied:
            return config_stream.encode(compiled.version, None,
                                        [(kind, body) for (kind, _), (body, _) in encoded.items()])
        keys = sorted(self._pending)
        return config_stream.encode(
            compiled.version, running,
            [(kind, encoded[(kind, key)][0]) for kind, key in keys if (kind, key) in encoded],
            [(kind, key) for kind, key in keys if (kind, key) not in encoded])

    def applied(self, compiled: Compiled) -> None:
        self._applied = compiled.version
        self._pending.clear()


async def load_once(source: ManifestSource, running: str | None, send: Send,
                    report: ReportErrors) -> str | None:
    """Compile what changed and send it (whole when the proxy runs a version this
    source did not make); the version the proxy runs afterwards. A refused set is
    logged and reported, and sends nothing."""
    directory = source.directory
    try:
        # In a thread: this process's loop keeps noticing its proxy going away.
        result = await asyncio.to_thread(source.compile)
        errors = result.errors
        for warning in result.warnings:
            log.warning("manifest problem", extra={"problem": warning})
        if not errors:
            compiled = result.compiled
            assert compiled is not None
            running = await send(source.stream(compiled, running))
            if running != compiled.version:  # it runs something else (a push): whole
                running = await send(source.stream(compiled, None))
            if running == compiled.version:
                source.applied(compiled)
            return running
    except (ConnectionError, asyncio.IncompleteReadError):
        raise  # the proxy is gone
    except Exception as exc:  # a bug must not end the watcher: say so, keep serving
        log.exception("manifests could not be loaded", extra={"directory": str(directory)})
        errors = [f"{directory}: could not be loaded ({type(exc).__name__}: {exc})"]
        source.reset()  # start afresh next time
    for error in errors:
        log.error("invalid manifest", extra={"problem": error})
    log.error("manifests refused; the last good config stays in force",
              extra={"directory": str(directory), "errors": len(errors)})
    await report(errors)
    return running


async def watch(source: ManifestSource, load: Callable[[], Awaitable[None]]) -> None:
    """Load now, then again whenever a manifest under the directory changes.

    The first load builds what lives as long as this process (every file's objects,
    the compiler's state, ~10 objects per consumer): full collections are held off
    while it grows (each would walk all of it again), and it is frozen out of the
    collector's sight afterwards, so that a full collection set off by a later change
    does not walk it while the change waits (tens of ms at 10,000 consumers). What a
    later load replaces is still freed by reference counting."""
    with _full_collections_held_off():
        await load()  # serve at once; what changes while the watcher is set up is read below
    gc.freeze()
    while True:
        watching = False
        try:
            async for changes in watchfiles.awatch(
                source.directory, watch_filter=_is_manifest, debounce=200, step=STEP_MS,
                rust_timeout=WATCH_TIMEOUT_MS, yield_on_timeout=True,
            ):
                if changes or not watching:  # the first yield: the watcher is set up
                    watching = True
                    await load()
        except Exception:  # the directory vanished, inotify ran out: watch again
            log.exception("watching the manifests failed; watching again",
                          extra={"directory": str(source.directory)})
        await asyncio.sleep(REWATCH_SECONDS)


@contextlib.contextmanager
def _full_collections_held_off() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _is_manifest(_change: watchfiles.Change, path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES) and not Path(path).name.startswith(".")


class ProxyLink:
    """This process's side of the conversation with its proxy (compiler_child.py):
    versions come in on stdin, config streams and refusals go out on ``out``. Stdin is
    read all the time, so that its end (the proxy gone, however it ended) is noticed
    at once, also while nothing is being sent."""

    def __init__(self, reader: asyncio.StreamReader, out: BinaryIO) -> None:
        self._reader, self._out = reader, out
        self._lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.gone = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self._reader.readline():
            self._lines.put_nowait(line)
        self._lines.put_nowait(b"")

    async def version(self) -> str | None:
        """The next version the proxy says it runs; raises IncompleteReadError when
        the proxy is gone."""
        line = await self._lines.get()
        if not line:
            self._lines.put_nowait(b"")
            raise asyncio.IncompleteReadError(b"", None)
        return config_stream.read_version(line)

    async def send(self, body: bytes) -> str | None:
        await self._write(config_stream.frame_change(body))
        return await self.version()

    async def report(self, errors: list[str]) -> None:
        await self._write(config_stream.frame_refused(errors[:MAX_SENT_ERRORS]))
        await self.version()

    async def _write(self, data: bytes) -> None:
        # A blocking write, in a thread: a whole config is more than a pipe holds.
        await asyncio.to_thread(self._write_all, data)

    def _write_all(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()


async def follow(directory: Path, stop: asyncio.Event) -> None:
    """Compile ``directory`` and keep the proxy on the other end of stdin/stdout up to
    date until it goes away (stdin closes) or ``stop`` is set (SIGTERM)."""
    # Background work: the kernel runs the proxy's loop first when the cores are busy.
    os.nice(NICENESS)
    # The protocol has stdout to itself: anything else printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    link = ProxyLink(reader, out)
    source = ManifestSource(directory)

    async def run() -> None:
        running = await link.version()

        async def load() -> None:
            nonlocal running
            running = await load_once(source, running, link.send, link.report)

        await watch(source, load)

    tasks = [asyncio.create_task(run()), link.gone, asyncio.create_task(stop.wait())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
                result, (asyncio.IncompleteReadError, ConnectionError)):
            log.error("the manifest compiler failed", exc_info=result)
    log.info("manifest compiler stopping", extra={
        "directory": str(directory), "why": "stopped" if stop.is_set() else "the proxy is gone"})
