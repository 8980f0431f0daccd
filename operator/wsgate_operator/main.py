"""`wsgate operator`: kopf, with the lifecycle of handlers.py, until stopped."""

from __future__ import annotations

import asyncio
import logging
import threading

import kopf
from prometheus_client import start_http_server

from .handlers import build_registry
from .metrics import OperatorMetrics
from .options import OperatorOptions

log = logging.getLogger("wsgate.operator")


async def run_operator(
    options: OperatorOptions,
    stop: asyncio.Event | threading.Event,
    *,
    liveness: str | None = None,
    ready: threading.Event | asyncio.Event | None = None,
    memo: kopf.Memo | None = None,
    metrics: OperatorMetrics | None = None,
) -> None:
    """Run the operator until ``stop`` is set. ``liveness`` is kopf's probe endpoint
    (e.g. http://0.0.0.0:8080/healthz); ``memo`` receives the operator's parts
    (``options``, ``metrics``, and once it has started ``cache``, ``reconciler``,
    ``pusher``); ``metrics`` is where it counts (a registry of its own by default)."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every handler call at info ("Handler ... succeeded."): a line per
        # event, tens of thousands at start-up and one per status written. Its warnings
        # and errors still show; --log-level debug shows the rest.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo = memo if memo is not None else kopf.Memo()
    memo.options = options
    memo.metrics = metrics or OperatorMetrics()
    namespaces = sorted({*options.namespaces, options.proxy_namespace}) \
        if options.namespaces else []
    log.info("starting", extra={"namespaces": namespaces or "all",
                                "proxy_selector": options.proxy_selector,
                                "proxy_namespace": options.proxy_namespace})
    await kopf.operator(
        registry=build_registry(),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop,
        ready_flag=ready,
        memo=memo,
    )


def serve_metrics(listen: tuple[str, int], metrics: OperatorMetrics) -> None:
    start_http_server(listen[1], addr=listen[0], registry=metrics.registry)
