"""The access log's line per session, written directly (accesslog.py) or through the
logging module: the same line either way, and every handler still gets it."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from wsgate import logs
from wsgate_proxy import accesslog
from wsgate_proxy.accesslog import log_session

FIELDS = {"route": "d/r", "consumer": "john", "auth": "KeyAuth", "upstream": "10.0.0.1:80",
          "duration_s": 0.012, "bytes_in": 10, "bytes_out": 20, "messages_in": 1,
          "messages_out": 2, "close_code": 1000, "closed_by": "client", "close_reason": None}
ACCESS = logging.getLogger("wsgate.access")


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """logs.configure() writing to a string, the logging setup restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("info")
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    accesslog.write_directly(None)


def configured_alone() -> logging.Handler:
    """The handler logs.configure() installed, made the root's only one again (pytest
    adds its log capture to the root for each test's run)."""
    root = logging.getLogger()
    (handler,) = [h for h in root.handlers if isinstance(h.formatter, logs.JsonFormatter)]
    root.handlers[:] = [handler]
    return handler


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_direct_line_is_the_line_logging_writes(stream):
    through_logging: list[logging.LogRecord] = []
    handler = configured_alone()
    handler.addFilter(lambda record: through_logging.append(record) or True)
    log_session(ACCESS, FIELDS)
    assert through_logging == []  # written directly
    ACCESS.info("session", extra=FIELDS)  # the logging module's way
    assert len(through_logging) == 1
    direct, logged = lines(stream)
    assert list(direct) == list(logged)  # the same fields in the same order
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct.pop("ts"))
    logged.pop("ts")
    assert direct == logged == {"level": "info", "logger": "wsgate.access",
                                "event": "session", **FIELDS}


def test_a_handler_added_later_gets_every_line(stream):
    configured_alone()
    records: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(extra)
    log_session(ACCESS, FIELDS)
    assert [r.getMessage() for r in records] == ["session"]
    assert records[0].route == "d/r"
    assert len(lines(stream)) == 1  # and the configured handler, once


def test_nothing_is_written_below_the_level(stream):
    configured_alone()
    logging.getLogger().setLevel(logging.WARNING)
    log_session(ACCESS, FIELDS)
    assert stream.getvalue() == ""
