"""Observe every request in one pure ASGI middleware: request id, metrics, access log.

Pure ASGI (no BaseHTTPMiddleware): one extra function call per message, no task, no
buffering, so the whole stack costs little of the bare endpoint's throughput.
"""

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Iterable
from http import HTTPStatus

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Throttled, unavailable
from .admission import ADMISSION, NEVER_SHED, Admission
from .logs import AccessLog, request_id
from .metrics import RequestMetrics

access_log = AccessLog()
request_metrics = RequestMetrics()

# A client's X-Request-ID is kept only if it is short and plain, so it cannot forge log lines.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestObserver:
    """Counts and logs every request, and sheds load: a request past the worker's limit in
    flight (admission.py), or one that waited in the worker longer than `max_wait` seconds
    before the app saw it (0: none), gets a 503 with Retry-After at once, never reaching
    the app: a worker that took them on would answer all of them late. The project's
    worker turns most of them away before they reach this middleware, which is cheaper
    still (gunicorn_worker.py); it finds the admission in the lifespan's state, which the
    server shares with its connections. Health checks and metrics are never shed.
    WebSockets are neither counted nor shed: one lives for hours, and would count against
    every HTTP request meanwhile. Shed requests are counted (metrics.py) and logged in one
    line per ten seconds, not a line each: a worker past capacity must not spend itself
    writing them."""

    def __init__(self, app: ASGIApp, max_in_flight: int, max_wait: float = 0) -> None:
        self.app = app
        self.max_wait = max_wait
        # Loop waits over a twentieth of max_wait are late, looked at once per max_wait (as
        # CoDel's 5 ms target in its 100 ms interval); a saturated worker holds what it
        # answers in a fifth of max_wait (docs/decisions.md, "Shedding").
        self.admission = Admission(
            most=max_in_flight,
            target=max_wait / 20,
            interval=max_wait,
            hold=max_wait / 5,
            shed=_count_shed,
            answer=_raw(_OVERLOADED),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and "state" in scope:
                scope["state"][ADMISSION] = self.admission
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        counted = self._admitted(scope)
        if counted is False or (counted and self._too_late(scope)):
            try:
                _count_shed(method)
                await _OVERLOADED(scope, receive, send)
            finally:
                if counted:
                    self.admission.done()
            return
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
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.admission.done()
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

    def _admitted(self, scope: Scope) -> bool | None:
        """True: taken on, and counted in flight (by the worker's protocol, or here under
        another server); False: to be shed; None: never shed, not counted."""
        if scope.get("extensions", {}).get("admitted"):  # counted: to be counted out
            return True
        if scope["path"].startswith(NEVER_SHED):
            return None
        return self.admission.admit()

    def _too_late(self, scope: Scope) -> bool:
        """Feed the request's wait to the limit; whether it waited past `max_wait`."""
        now = time.monotonic()
        waited = _waited(scope, now)
        self.admission.waited(waited, now)
        return bool(self.max_wait) and waited > self.max_wait


_OVERLOADED = unavailable("the service is at capacity; try again shortly")


_shed_lines = Throttled(logging.getLogger(__name__))


def _count_shed(method: str) -> None:
    request_metrics.shed(method)
    _shed_lines.warning("shed a request with a 503: this worker is past its capacity")


def _raw(answer: Response) -> bytes:
    """`answer` as HTTP/1.1 puts it on the wire, for a server that writes it itself."""
    status = answer.status_code
    head = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
    head += [name + b": " + value for name, value in answer.raw_headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + answer.body


def _waited(scope: Scope, now: float) -> float:
    """Seconds since the worker read the request's head, as the project's worker stamps it
    (serving/gunicorn_worker.py; 0 under another server): in a worker past capacity, its
    wait for the event loop to get to it."""
    read_at = scope.get("extensions", {}).get("head_read_at")
    return now - read_at if read_at else 0.0


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
