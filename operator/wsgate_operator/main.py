"""`wsgate operator`: kopf, with the handlers in handlers.py, until stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import kopf
from prometheus_client import start_http_server

from .options import OPTIONS, OperatorOptions

log = logging.getLogger("wsgate.operator")


async def run_operator(
    options: OperatorOptions,
    stop: asyncio.Event | threading.Event,
    *,
    liveness: str | None = None,
    ready: threading.Event | asyncio.Event | None = None,
    memo: kopf.Memo | None = None,
) -> None:
    """Run the operator until ``stop`` is set. ``liveness`` is kopf's probe endpoint
    (e.g. http://0.0.0.0:8080/healthz); ``memo`` receives the operator's parts
    (``cache``, ``reconciler``, ``pusher``) once it has started."""
    for f in dataclasses.fields(OperatorOptions):
        setattr(OPTIONS, f.name, getattr(options, f.name))
    from . import handlers  # noqa: F401  (registers the handlers, once)

    namespaces = sorted({*options.namespaces, options.proxy_namespace}) \
        if options.namespaces else []
    log.info("starting", extra={"namespaces": namespaces or "all",
                                "proxy_selector": options.proxy_selector,
                                "proxy_namespace": options.proxy_namespace})
    await kopf.operator(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop,
        ready_flag=ready,
        memo=memo,
    )


def serve_metrics(listen: tuple[str, int]) -> None:
    start_http_server(listen[1], addr=listen[0])
