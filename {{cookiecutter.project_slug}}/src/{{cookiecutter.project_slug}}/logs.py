"""Structured logs: one JSON object a line, carrying the request id of the request it is about."""

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

# Set by RequestObserver for the duration of each request.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Each record would otherwise look up its caller's frame, its thread and its process name:
# fields these lines never show, and a measurable share of a fast request's time
# (docs/performance.md). The logging HOWTO's "Optimization" section names these switches.
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False


# One encoder for every line: json.dumps with an option builds a new one on each call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    # The last second formatted: lines come many to a second, and strftime is the slow part.
    _second: tuple[int, str] = (0, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if (current := request_id.get()) is not None:
            entry["request_id"] = current
        # Fields passed with `extra=`, such as the access log's method, path and status.
        entry |= {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond: 2026-11-27T16:40:00.123+00:00."""
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int((created - second) * 1000):03d}+00:00"


def logging_config(level: str) -> dict[str, Any]:
    """The logging set-up Gunicorn applies in the master; workers inherit it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {
            "gunicorn.error": {"handlers": ["stdout"], "level": level.upper(), "propagate": False},
            # Replaced by the app's access log, which knows the request id.
            "gunicorn.access": {"handlers": [], "propagate": False},
        },
    }
