"""Structured logs: one JSON object a line, carrying the request id of the request it is about."""

import functools
import json
import logging
import os
import select
import sys
import time
from contextvars import ContextVar
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from .turns import EndOfTurn

# Set by RequestObserver for the duration of each request.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Each record would otherwise look up its caller's frame, its thread and its process name:
# fields these lines never show, and a measurable share of a fast request's time. The
# logging HOWTO's "Optimization" section names these switches.
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False


# One encoder for every line: json.dumps with an option builds a new one on each call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
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


# The last millisecond formatted: under load, lines come several to a millisecond.
_last: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC to the millisecond: 2026-11-27T16:40:00.123+00:00."""
    global _last
    millisecond, last = int(created * 1000), _last  # one read: thread-pool threads log too
    if last[0] != millisecond:
        second, fraction = divmod(millisecond, 1000)
        last = _last = (millisecond, f"{_date_and_time(second)}.{fraction:03d}+00:00")
    return last[1]


# Only the latest second is kept: strftime is the slow part, and its text changes once a second.
@functools.lru_cache(maxsize=1)
def _date_and_time(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _access_line(pid: int) -> str:
    """The format of this process's access lines: the pid is filled in once, not per line.
    Every text a client could choose is quoted by json; request ids are plain (middleware.py).
    """
    return (
        '{"time": "%s", "level": "info", "logger": "access", "pid": ' + str(pid) + ", "
        '"message": %s, "request_id": "%s", "method": %s, "path": %s, "route": %s, '
        '"status": %d, "duration_ms": %.2f, "client": %s}\n'
    )


class AccessLog:
    """One line per answered request, shaped as JsonFormatter's lines, written to stdout.

    The busiest log there is, so it bypasses `logging`: a record, a handler's lock, the
    formatter and a flush per line were most of what observing a request cost. A turn's
    lines are formatted and written together as the turn ends, and carry that moment as
    their time (a turn lasts a millisecond or so). The `access` logger stays its switch:
    LOG_LEVEL above info, or disabling that logger, turns it off. Call it from the event
    loop only.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("access")
        self._line = _access_line(os.getpid())
        os.register_at_fork(after_in_child=self._forked)
        self._pending: list[tuple[str, str, str, int, float, str | None, str | None]] = []
        self._turn = EndOfTurn(self.flush)

    def write(
        self, method: str, path: str, route: str, status: int, seconds: float, client: str | None
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._turn.schedule()
        self._pending.append((method, path, route, status, seconds, client, request_id.get()))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        now = _timestamp(time.time())
        lines = [
            self._line
            % (
                now,
                _quote(f"{method} {path} {status}"),
                rid,
                _quote(method),
                _quote(path),
                _quote(route),
                status,
                seconds * 1000,
                "null" if client is None else _quote(client),
            )
            for method, path, route, status, seconds, client, rid in pending
        ]
        # Whole lines, at most PIPE_BUF bytes a write (the lines are ASCII): such a write to
        # a pipe is atomic, so no other process's line lands inside one and no signal cuts
        # one short, which with PYTHONUNBUFFERED would lose the rest of it.
        chunk: list[str] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > select.PIPE_BUF:
                self._write(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(chunk)

    @staticmethod
    def _write(lines: list[str]) -> None:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()

    def _forked(self) -> None:
        self._line = _access_line(os.getpid())
        self._pending = []


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
