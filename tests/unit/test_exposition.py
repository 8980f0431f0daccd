"""The /metrics text rendered a slice at a time: the same families and values as
prometheus_client's generate_latest, the loop let run between slices."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.parser import text_string_to_metric_families

from wsgate_proxy.exposition import Exposition

# A route name holding every character the text format escapes.
AWKWARD = 'team/say "hi"\\back\nslash'


def families(text: str) -> dict[str, Any]:
    return {
        family.name: (family.type, family.documentation, sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value, s.timestamp)
            for s in family.samples))
        for family in text_string_to_metric_families(text)
    }


def filled(routes: int) -> CollectorRegistry:
    """A registry like the proxy's: labelled counters, gauges and histograms (a series
    of each per route), an unlabelled gauge, a labelled metric with no series yet."""
    registry = CollectorRegistry()
    handshakes = Counter("t_handshakes", "Handshakes.", ["route", "outcome"],
                         registry=registry)
    active = Gauge("t_active", "Live sessions\nwith a \\ and a newline.", ["route"],
                   registry=registry)
    connect = Histogram("t_connect_seconds", "Connect time.", ["route"],
                        buckets=(0.001, 0.01, 0.1, 1), registry=registry)
    Counter("t_unused", "Never counted.", ["route"], registry=registry)
    Gauge("t_applied", "Unlabelled.", registry=registry).set(1.7e9)
    for n, route in enumerate([AWKWARD, *(f"ns/route-{i}" for i in range(routes))]):
        handshakes.labels(route, "ok").inc(n)
        handshakes.labels(route, "unauthorized").inc(0.5)
        active.labels(route).set(-n)
        connect.labels(route).observe(0.005 * n)
    return registry


@pytest.mark.parametrize("created", [False, True])
def test_same_families_and_values_as_generate_latest(created: bool) -> None:
    saved = prometheus_metrics._use_created
    prometheus_metrics._use_created = created  # as disable_created_metrics() leaves it
    try:
        registry = filled(50)
        expected = generate_latest(registry).decode()
        exposition = Exposition(registry)
        first = asyncio.run(exposition.render()).decode()
        again = asyncio.run(exposition.render()).decode()  # from the kept label text
    finally:
        prometheus_metrics._use_created = saved
    assert families(first) == families(expected)
    assert again == first
    assert len(families(first)["t_connect_seconds"][2]) == 51 * 7  # 4 buckets, +Inf, sum, count
    assert ('route="team/say \\"hi\\"\\\\back\\nslash"') in first


def test_lets_the_loop_run_between_slices() -> None:
    """20,000 series are rendered in slices, with other work on the loop in between."""
    registry = filled(2_000)

    async def main() -> tuple[int, bytes]:
        turns = 0
        done = asyncio.Event()

        async def other_work() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        body = await Exposition(registry).render()
        done.set()
        await other
        return turns, body

    turns, body = asyncio.run(main())
    assert turns > 3
    assert families(body.decode()) == families(generate_latest(registry).decode())


def test_leaves_nothing_for_the_collector() -> None:
    """A render's objects die young: ten renders of 20,000 series set off no collection
    beyond the youngest generation (older ones lead to full collections, which walk the
    whole heap while the loop waits: 200 ms for a million objects)."""
    registry = filled(2_000)
    exposition = Exposition(registry)
    older: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] > 0:
            older.append(info["generation"])

    async def renders() -> None:
        for _ in range(10):
            await exposition.render()

    gc.collect()
    gc.callbacks.append(count)
    try:
        asyncio.run(renders())
    finally:
        gc.callbacks.remove(count)
    assert older == []


def test_keeps_label_text_only_for_series_that_exist() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("t_gauge", "A gauge.", ["route"], registry=registry)
    for i in range(10):
        gauge.labels(f"r{i}").set(i)
    exposition = Exposition(registry)
    asyncio.run(exposition.render())
    for i in range(9):
        gauge.remove(f"r{i}")
    body = asyncio.run(exposition.render()).decode()
    assert list(exposition._labels[gauge].values()) == ['route="r9"']
    assert families(body)["t_gauge"][2] == [("t_gauge", (("route", "r9"),), 9.0, None)]
