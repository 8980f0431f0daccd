"""Standalone's manifest source reads again only the files that changed and hands the
compiler only their objects: after every edit its result equals a fresh compile of the
whole directory, refusals (duplicates across files, a bad apiVersion) included."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil

from tests.support import consumer_objects, copy_quickstart, write_manifests
from wsgate_operator.manifests import compile_directory
from wsgate_operator.standalone import NEVER, ManifestSource, watch


def assert_same_as_fresh(source: ManifestSource) -> None:
    mine, fresh = source.compile(), compile_directory(source.directory)
    assert sorted(mine.errors) == sorted(fresh.errors)
    assert sorted(mine.warnings) == sorted(fresh.warnings)
    if fresh.compiled is None:
        assert mine.compiled is None
    else:
        assert mine.compiled is not None
        assert mine.compiled.version == fresh.compiled.version
        assert mine.compiled.encoded == fresh.compiled.encoded


def test_every_edit_gives_what_a_fresh_compile_gives(tmp_path):
    directory = copy_quickstart(tmp_path / "m", 9001, 9002)
    source = ManifestSource(directory)
    assert_same_as_fresh(source)
    jane = write_manifests(directory, "jane.yaml", consumer_objects("jane", "jane-key"))
    assert_same_as_fresh(source)
    # The same objects in a second file: refused, both files named.
    shutil.copy(jane, directory / "jane-again.yaml")
    assert_same_as_fresh(source)
    assert any("is also defined in" in e for e in source.compile().errors)
    jane.unlink()  # the copy alone now: valid again
    assert_same_as_fresh(source)
    write_manifests(directory, "jane-again.yaml", consumer_objects("jane", "rotated"))
    assert_same_as_fresh(source)
    bad = [dict(consumer_objects("joe", "joe-key")[1], apiVersion="wsgate.io/v9")]
    write_manifests(directory, "joe.yaml", bad)
    assert_same_as_fresh(source)
    (directory / "joe.yaml").unlink()
    (directory / "consumer.yaml").unlink()
    assert_same_as_fresh(source)
    route = directory / "route.yaml"
    route.write_text(route.read_text().replace("value: /.ws", "value: /other"))
    assert_same_as_fresh(source)
    assert source.compile().compiled.changed_items == frozenset()  # nothing since


def test_the_first_load_runs_without_full_collections_and_is_frozen_after(tmp_path):
    """What the first load builds lives as long as the compiler: no full collection
    walks it while it grows, and it is out of the collector's sight afterwards."""
    source = ManifestSource(copy_quickstart(tmp_path / "m", 9001, 9002))
    thresholds = gc.get_threshold()
    seen: list[tuple[int, int]] = []  # (oldest generation's threshold, frozen) per load
    again = asyncio.Event()  # the second load: once the watcher is set up

    async def load() -> None:
        source.compile()
        seen.append((gc.get_threshold()[2], gc.get_freeze_count()))
        if len(seen) == 2:
            again.set()

    async def main() -> None:
        watcher = asyncio.create_task(watch(source, load))
        async with asyncio.timeout(10):
            await again.wait()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    try:
        gc.collect()
        gc.unfreeze()
        asyncio.run(main())
        assert seen[0] == (NEVER, 0)
        assert seen[1][0] == thresholds[2] != NEVER
        assert seen[1][1] > 0  # the first load's objects, frozen
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
