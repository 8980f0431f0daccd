"""Structured logging: one JSON object per line, fields from ``extra=``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from wsgate_proxy import accesslog
from wsgate_proxy.listener import parse_error_reason

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# kopf attaches its whole settings object and a flag of its own to each record.
_DROPPED = {"settings", "k8s_skip"}
_OMITTED = frozenset(_STANDARD | _DROPPED)
# One encoder for every line (json.dumps with default= builds one per call).
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    # The proxy writes a line per session (the access log): the time of day is formatted
    # once per second, not per line (one tuple, so that threads never mix two seconds).
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        entry = self.head(record.created, int(record.msecs), record.levelname.lower(),
                          record.name, record.getMessage())
        entry.update((k, v) for k, v in vars(record).items() if k not in _OMITTED)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)

    def head(self, created: float, msecs: int, level: str, logger: str,
             event: str) -> dict[str, Any]:
        """A line's first fields, in the order every line has them."""
        second, prefix = self._second
        if int(created) != second:
            second = int(created)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        return {"ts": f"{prefix}.{msecs:03d}Z", "level": level, "logger": logger,
                "event": event}


def direct_writer(handler: logging.StreamHandler[Any],
                  formatter: JsonFormatter) -> accesslog.DirectWriter:
    """The access log's line written as ``handler`` would write its record, while
    ``handler`` is the root's only one (accesslog.py)."""
    root = logging.getLogger()

    def write(logger: str, fields: dict[str, Any]) -> bool:
        handlers = root.handlers
        if len(handlers) != 1 or handlers[0] is not handler:
            return False
        created = time.time()
        entry = formatter.head(created, int((created - int(created)) * 1000), "info",
                               logger, "session")
        entry.update(fields)
        line = _ENCODER.encode(entry) + handler.terminator
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line)
            handler.stream.flush()
        return True

    return write


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a giant header, garbage bytes) as a
    server error with a traceback; it is the client's mistake, answered with 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "bad request from client", ()
            record.reason = parse_error_reason(record.exc_info[1])
            record.exc_info = record.exc_text = None
        return True


def configure(level: str = "info") -> None:
    # What a record would collect and no line shows (the caller's file and line: a stack
    # walk; the thread and process: a system call) is not collected (the logging HOWTO's
    # "Optimization").
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    handler.addFilter(ClientErrorFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    accesslog.write_directly(direct_writer(handler, formatter))
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
