"""Observe every request in one pure ASGI middleware: request id, metrics, access log.

Pure ASGI (no BaseHTTPMiddleware): one extra function call per message, no task, no
buffering, so the whole stack costs little of the bare endpoint's throughput.
"""

import itertools
import os
import re
import secrets
import time
from collections.abc import Awaitable, Iterable

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import unavailable
from .logs import AccessLog, request_id
from .metrics import RequestMetrics

access_log = AccessLog()
request_metrics = RequestMetrics()

# A client's X-Request-ID is kept only if it is short and plain, so it cannot forge log lines.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestObserver:
    """Counts and logs every request, and sheds at once with a 503 those that waited in the
    worker longer than `max_wait` seconds before the app saw them (0: none), or are past
    `max_in_flight`: a worker that took them on would answer all of them late. Health
    checks and metrics are never shed: an instance at capacity must not look dead, and its
    metrics are what shows it at capacity. WebSockets are neither counted nor shed: one
    lives for hours, and would count against every HTTP request meanwhile."""

    def __init__(self, app: ASGIApp, max_in_flight: int, max_wait: float = 0) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        rid, received = _request_id_and_length(scope)
        token = request_id.set(rid)
        status = 0  # until the answer starts
        route = ""
        sent = 0

        # A plain function returning send's awaitable: no coroutine of its own per message.
        def send_with_id(message: Message) -> Awaitable[None]:
            nonlocal status, route, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                headers = message.get("headers", ())
                sent = _content_length(headers)
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
                # Counted as the turn ends, with the other answers it started (metrics.py).
                request_metrics.answered(method, route, status)
            return send(message)

        request_metrics.started(method)
        overloaded = self.in_flight >= self.max_in_flight or (
            self.max_wait and _waited(scope) > self.max_wait
        )
        shed = overloaded and not scope["path"].startswith(NEVER_SHED)
        self.in_flight += 1
        try:
            if shed:
                request_metrics.refused("overloaded")
                await _OVERLOADED(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            if not status:  # the app raised (or returned) before answering: the server says 500
                status, route = 500, _route(scope)
                request_metrics.answered(method, route, status)
            request_metrics.finished(method, route, elapsed, received, sent)
            client = scope.get("client")
            access_log.write(
                method, scope["path"], route, status, elapsed, str(client[0]) if client else None
            )
            request_id.reset(token)


NEVER_SHED = ("/health/", "/metrics")
_OVERLOADED = unavailable("the service is at capacity; try again shortly")


def _waited(scope: Scope) -> float:
    """Seconds since the worker read the request's head, as the project's worker stamps it
    (serving/gunicorn_worker.py; 0 under another server): in a worker past capacity, its
    wait for the event loop to get to it."""
    read_at = scope.get("extensions", {}).get("head_read_at")
    return time.monotonic() - read_at if read_at else 0.0


def _request_id_and_length(scope: Scope) -> tuple[str, int]:
    """The request's id and its Content-Length (0 without one), in one pass over its head."""
    rid = None
    length = 0
    name: bytes
    value: bytes
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = _length(value)
        elif name == b"x-request-id" and rid is None and _SAFE_ID.fullmatch(value):
            rid = value.decode()
    return rid or f"{_id_prefix}{next(_id_counter):x}", length


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b"content-length":
            return _length(value)
    return 0


def _length(value: bytes) -> int:
    """A Content-Length's bytes, or 0 for one that is not a plain number."""
    return int(value) if value.isdigit() else 0


# New request ids: 32 hex digits, a random prefix per process and a counter. Unique, and
# without uuid4's system call for random bytes on every request. The counter starts at
# 2**60, so it is always 16 hex digits without the slower zero-padding format (and a
# new id's 17th digit is always 1).
_id_counter = itertools.count(1 << 60)
_id_prefix = secrets.token_hex(8)


def _new_id_prefix() -> None:
    global _id_prefix  # each forked worker draws its own
    _id_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)


def _route(scope: Scope) -> str:
    """The route template (/items/{item_id}), never the raw path: labels stay few."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


# Probes address a pod by its IP, and so does Prometheus (on the metrics port alone).
UNCHECKED_HOSTS = frozenset({"/health/live", "/health/ready", "/metrics"})


class TrustedHosts:
    """Starlette's Host check, for every path but the health checks and the metrics, whose
    clients address a pod by its IP. Only their exact paths: any other (`/health/live/`,
    say, which redirects) could build a URL from an unchecked Host."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in UNCHECKED_HOSTS:
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)
