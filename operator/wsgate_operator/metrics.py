"""The operator's Prometheus metrics: an object with a registry of its own, given to the
parts that count (the pusher, the reconciler), served by `--metrics-listen`.

No module globals: two operators in one process (as tests run them) each count their
own, and a test reads the figures of the operator it started.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pushes = Counter(
            "wsgate_operator_pushes_total", "Config pushes to proxies, by outcome.",
            ["outcome"], registry=self.registry)
        self.push_bytes = Counter(
            "wsgate_operator_push_bytes", "Bytes of config pushed to proxies, by kind of "
            "push (delta: what changed from the version the proxy ran; full).", ["kind"],
            registry=self.registry)
        self.listings = Counter(
            "wsgate_operator_listings", "Proxies on a version this operator did not build "
            "asked what they run item by item (GET /config/digests), by outcome (used: a "
            "delta from it was pushed; unsupported: an older proxy; failed: late, too "
            "large or malformed): but for used, the whole config is pushed.", ["outcome"],
            registry=self.registry)
        self.push_seconds = Histogram(
            "wsgate_operator_push_seconds", "Time to push a config to a proxy.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.compile_seconds = Histogram(
            "wsgate_operator_compile_seconds", "Time to compile the whole view.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.status_writes = Counter(
            "wsgate_operator_status_writes", "Status writes to the API, by outcome "
            "(written; failed: computed and queued again by the next build).", ["outcome"],
            registry=self.registry)
        self.statuses_skipped = Counter(
            "wsgate_operator_statuses_skipped", "Statuses computed and not written, by why "
            "(unchanged: the object carries it already, or it is queued; replaced: a newer "
            "status of the same object took its place in the queue).", ["reason"],
            registry=self.registry)
        self.statuses_pending = Gauge(
            "wsgate_operator_statuses_pending", "Status writes queued, waiting for the "
            "pushes to be done and for a writer.", registry=self.registry)
        for outcome in ("written", "failed"):  # exported at 0 before the first
            self.status_writes.labels(outcome)
        for kind in ("delta", "full"):
            self.push_bytes.labels(kind)
        for outcome in ("used", "unsupported", "failed"):
            self.listings.labels(outcome)
        for reason in ("unchanged", "replaced"):
            self.statuses_skipped.labels(reason)
        self.watch_restarts = Counter(
            "wsgate_operator_watch_restarts", "Watches begun again other than after the "
            "server's timeout, by kind and why (expired: 410 Gone, listed again; failed: "
            "an error or an answer the API does not give, retried after a backoff).",
            ["kind", "reason"], registry=self.registry)
        self.objects = Gauge(
            "wsgate_operator_objects", "Objects in the operator's view, by kind.", ["kind"],
            registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when it has none yet)."""
        return self.registry.get_sample_value(name, labels) or 0.0
