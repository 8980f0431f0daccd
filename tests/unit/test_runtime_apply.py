"""Config streams applied by the proxy's runtime: a whole config that repeats what runs
reuses it and touches only what differs, no full garbage collection runs during an
apply, and replaced configs are let go (memory stays flat across whole configs)."""

from __future__ import annotations

import asyncio
import functools
import gc
import weakref

import pytest

from tests.support import consumer_objects, objects_for
from wsgate_operator.compiler import Snapshot, compile_snapshot
from wsgate_proxy import config_stream
from wsgate_proxy import runtime as runtime_module
from wsgate_proxy.runtime import NEVER, ActiveConfig, Runtime
from wsgate_proxy.slices import SliceClock


@functools.cache
def whole(consumers: int, prefix: str, changed: int = -1) -> bytes:
    """A whole config stream: the quickstart route, ``consumers`` consumers with keys
    ``prefix-i`` (consumer ``changed`` with another)."""
    objects = objects_for(9001)
    for i in range(consumers):
        objects += consumer_objects(f"user-{i}", f"{prefix}-{i}" if i != changed else "other")
    compiled = compile_snapshot(Snapshot.of(objects))
    return config_stream.encode(compiled.version, None, [
        (kind, body) for (kind, _key), (body, _digest) in compiled.encoded.items()])


async def released(runtime: Runtime) -> None:
    """Wait until the configs replaced so far have been let go."""
    async with asyncio.timeout(10):
        await runtime.released()


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # what the runtime froze belongs to this test only


async def test_a_whole_config_repeating_the_running_one_reuses_it(unfrozen):
    runtime = Runtime()
    assert await runtime.apply_stream(whole(50, "key"))
    first = runtime.active
    assert first is not None
    assert await runtime.apply_stream(whole(50, "key", changed=7))
    second = runtime.active
    assert second is not None
    assert second is not first
    assert second.consumers_changed == {"default/user-7"}
    assert not second.routes_changed
    assert second.router is first.router  # no route differs: not rebuilt
    assert second.items["consumer"]["default/user-8"] is first.items["consumer"]["default/user-8"]
    assert second.items["consumer"]["default/user-7"] is not first.items["consumer"][
        "default/user-7"]
    assert second.authenticator.holder("default/user-8", next(iter(
        second.items["consumer"]["default/user-8"].keys)).sha256) is not None
    # The same whole config again: nothing to do.
    assert not await runtime.apply_stream(whole(50, "key", changed=7))


async def test_only_a_whole_config_looks_its_items_up_in_the_running_one(unfrozen):
    """The lookup indexes every running item (ten thousand consumers: about 10 ms); a
    delta carries only what changed, so it is parsed without it."""
    runtime = Runtime()
    await runtime.apply_stream(whole(50, "key"))
    active = runtime.active
    assert active is not None
    line = next(line for line in whole(50, "key", changed=7).split(b"\n")
                if line.startswith(b"set consumer ") and b"user-7" in line)
    delta = config_stream.encode("next", active.version,
                                 [("consumer", line.removeprefix(b"set consumer "))])
    change = await config_stream.read(delta, runtime.known_item)
    assert list(change.set["consumer"]) == ["default/user-7"]
    assert "by_digest" not in active.__dict__
    await config_stream.read(whole(50, "key", changed=7), runtime.known_item)
    assert "by_digest" in active.__dict__


async def test_no_full_collection_runs_while_a_whole_config_is_applied(unfrozen):
    runtime = Runtime()
    await runtime.apply_stream(whole(1500, "key"))
    thresholds = gc.get_threshold()
    full: list[dict] = []
    during = False

    def record(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2 and during:
            full.append(info)

    gc.callbacks.append(record)
    try:
        during = True
        # Every consumer new: 1,500 consumers' objects are allocated by the parse and
        # the build, which would set a full collection off.
        assert await runtime.apply_stream(whole(1500, "new"))
        during = False
    finally:
        gc.callbacks.remove(record)
    assert full == []
    assert gc.get_threshold() == thresholds != (thresholds[0], thresholds[1], NEVER)
    assert len(runtime.active.items["consumer"]) == 1501  # and the quickstart's john


async def test_a_replaced_config_is_let_go(unfrozen):
    runtime = Runtime()
    await runtime.apply_stream(whole(200, "key"))
    first = weakref.ref(runtime.active)
    await runtime.apply_stream(whole(200, "new"))
    await released(runtime)
    assert first() is None


async def test_letting_a_replaced_config_go_costs_what_replaced_it(unfrozen):
    """A config replaced by a one-consumer change frees that consumer a slice at a time;
    the rest it shares with its successor, and its indexes go at once, freeing none."""
    runtime = Runtime()
    await runtime.apply_stream(whole(50, "key"))
    first = runtime.active
    assert first is not None
    change = await config_stream.read(whole(50, "key", changed=7), runtime.known_item)
    second = ActiveConfig(first, change, runtime.endpoint_sessions, runtime.health,
                          runtime.passwords)
    for _ in second.build():
        pass
    seven = next(iter(first.items["consumer"]["default/user-7"].keys)).sha256
    replaced = second.take_replaced()
    assert replaced == [("consumer", "default/user-7")]
    assert second.take_replaced() == []  # not kept with the live config
    for _ in first.release(replaced):
        pass
    assert first.items["consumer"].keys() == second.items["consumer"].keys() - {"default/user-7"}
    assert first.authenticator.holder("default/user-7", seven) is None
    eight = first.items["consumer"]["default/user-8"]
    assert eight is second.items["consumer"]["default/user-8"]
    assert first.authenticator.holder("default/user-8", next(iter(eight.keys)).sha256) is eight


async def test_memory_stays_flat_across_a_hundred_whole_configs(unfrozen):
    """Each whole config brings new objects and is frozen out of the collector's sight:
    what it replaced must still be freed (frozen objects stay frozen until freed)."""
    runtime = Runtime()
    counts = []
    for round_ in range(100):
        gc.collect()  # this test's own garbage must not be frozen with the configs
        assert await runtime.apply_stream(whole(100, "even" if round_ % 2 else "odd"))
        await released(runtime)
        counts.append(gc.get_freeze_count() + len(gc.get_objects()))
    assert counts[-1] <= counts[9] * 1.02, counts[::10]


def test_a_stream_read_line_by_line_names_the_lines_a_split_would():
    """parse() finds lines one at a time (a split of 50,000 consumers' body held the loop
    10-14 ms): the same change with or without a last newline or blank lines, and an
    error names the line a split of the body numbers."""
    body = whole(30, "key")

    def parsed(data: bytes) -> config_stream.ConfigChange:
        *_, change = config_stream.parse(data)
        assert change is not None
        return change

    expected = parsed(body)
    for variant in (body.rstrip(b"\n"), body.replace(b"\nset ", b"\n\nset "), body + b"\n\n"):
        change = parsed(variant)
        assert (change.version, change.base, change.digests) == (
            expected.version, expected.base, expected.digests)
    lines = body.split(b"\n")
    for wrong in (1, 7, len(lines) - 2):
        broken = b"\n".join([*lines[:wrong], b"set nothing {}", *lines[wrong:]])
        with pytest.raises(config_stream.StreamError, match=rf"^line {wrong + 1}: "):
            parsed(broken)
    with pytest.raises(config_stream.StreamError, match=r"^line 1: not a header"):
        parsed(b"set consumer {}\n")


async def test_the_digest_index_is_built_a_slice_at_a_time(unfrozen, monkeypatch):
    """A whole config's parse looks each item up by digest: the index of the running
    items (8 ms at 50,000) is built before, a slice at a time, and is the same."""
    runtime = Runtime()
    await runtime.apply_stream(whole(1500, "key"))
    active = runtime.active
    assert active is not None
    monkeypatch.setattr(runtime_module, "SliceClock", lambda every=1: SliceClock(0, every))
    slices = sum(1 for _ in active.indexing())
    assert slices >= len(active.digests) // 256 >= 5
    assert active.__dict__["by_digest"] == {d: item for item, d in active.digests.items()}
    assert list(active.indexing()) == []  # built once
