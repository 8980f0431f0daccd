"""The Prometheus text exposition of a registry, rendered on the event loop a slice at
a time.

prometheus_client's ``generate_latest`` takes about 11 µs a series (it sorts, checks
and escapes every label of every sample again on each scrape): 200 ms for the 19,000
series of a thousand routes, which in a thread still holds the loop for up to 20 ms at
a time (the interpreter lock and the collections its allocations cause). Here a
labelled metric's series are read child by child a slice at a time (``SliceClock``),
each series' escaped label text is kept from one render to the next (only values are
formatted), and the loop runs between slices. Collectors without labelled children
(the process collector, unlabelled metrics) are few lines each and left to
``generate_latest``, so the output is the same text.

prometheus_client has no public way to read a labelled metric's children one at a
time: this reads its registry's collector list and a metric's children as its own
collect() does (``_collector_to_names``, ``_metrics``, ``_child_samples()``).
tests/unit/test_exposition.py compares the result with generate_latest's, so a
release that changes them fails there, not in production.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .slices import SliceClock

# Samples that generate_latest puts in a gauge family of their own after the
# metric's (OpenMetrics-only samples in the Prometheus format).
_APART = ("_created", "_gsum", "_gcount")


class _Only:
    """One collector as ``generate_latest`` takes a registry."""

    def __init__(self, metrics: Iterable[Any]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        return self._metrics


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Exposition:
    """Renders a registry; keeps each series' label text between renders (only for the
    series that still exist, so it is bounded by the series, not by their history)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        # Per metric, each series' label text by its label values (the metric's own
        # keys: no new objects to keep between renders).
        self._labels: dict[MetricWrapperBase, dict[tuple[str, ...], str]] = {}

    async def render(self) -> bytes:
        """The registry's text exposition, as ``generate_latest`` renders it."""
        clock = SliceClock(every=16)
        text = _Text()
        labels: dict[MetricWrapperBase, dict[tuple[str, ...], str]] = {}
        for collector in self._collectors():
            if isinstance(collector, MetricWrapperBase) and collector._is_parent():
                await self._family(collector, text, labels, clock)
            else:
                text.lines.append(generate_latest(_Only(collector.collect())).decode())
            if clock.due():
                await text.pause(clock)
        self._labels = labels
        text.flush()
        return b"".join(text.chunks)

    def _collectors(self) -> list[Collector]:
        # The registry lists its collectors only to collect() them all at once (which
        # for a labelled metric builds every sample in one go): the same snapshot
        # collect() takes.
        registry = self._registry
        with registry._lock:
            return list(registry._collector_to_names)

    async def _family(self, metric: MetricWrapperBase, text: _Text,
                      labels: dict[MetricWrapperBase, dict[tuple[str, ...], str]],
                      clock: SliceClock) -> None:
        """A labelled metric's lines: its HELP and TYPE, then each child's samples."""
        described = metric.describe()[0]
        lines = text.lines
        lines.append(generate_latest(_Only([described])).decode())
        with metric._lock:
            # A copy of the dict, not a list of its items: a render should leave no
            # objects that live through collections (they would bring on a full one,
            # which walks the whole heap with the loop waiting).
            children = dict(metric._metrics)
        name, names = described.name, metric._labelnames
        known, kept = self._labels.get(metric, {}), labels.setdefault(metric, {})
        extra: dict[tuple[tuple[str, str], ...], str] = {}
        apart: dict[str, list[str]] = {}
        for values, child in children.items():
            series = known.get(values)
            if series is None:
                series = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
            kept[values] = series
            for sample in child._child_samples():
                label_text = series
                if sample.labels:  # a histogram bucket's le, a summary's quantile
                    pairs = tuple(sample.labels.items())
                    more = extra.get(pairs)
                    if more is None:
                        more = extra[pairs] = "".join(f',{n}="{_escape(v)}"' for n, v in pairs)
                    label_text = series + more
                stamp = ("" if sample.timestamp is None
                         else f" {int(float(sample.timestamp) * 1000):d}")
                value = floatToGoString(sample.value)
                line = f"{name}{sample.name}{{{label_text}}} {value}{stamp}\n"
                if sample.name in _APART:
                    apart.setdefault(sample.name, []).append(line)
                else:
                    lines.append(line)
            if clock.due():
                await text.pause(clock)
        for suffix, apart_lines in sorted(apart.items()):
            family = Metric(name + suffix, described.documentation, "gauge")
            lines.append(generate_latest(_Only([family])).decode())
            lines.extend(apart_lines)


class _Text:
    """The exposition so far: lines of the current slice, encoded at its end (one
    encode of the whole text would hold the loop for milliseconds)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.chunks: list[bytes] = []

    def flush(self) -> None:
        self.chunks.append("".join(self.lines).encode())
        self.lines.clear()

    async def pause(self, clock: SliceClock) -> None:
        self.flush()
        await clock.pause()
