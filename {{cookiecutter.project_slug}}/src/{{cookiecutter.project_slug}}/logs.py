"""Structured logs: one JSON object a line, carrying the request id of the request it is about."""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
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
        return json.dumps(entry, default=str)


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
