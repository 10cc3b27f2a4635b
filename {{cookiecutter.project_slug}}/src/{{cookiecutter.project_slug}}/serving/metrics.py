"""Prometheus metrics that stay right across Gunicorn workers.

Each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py before any worker starts); /metrics sums the files of every worker,
those of workers that died or were recycled included, so counters never go backwards.
Without the variable (a test, a single process) the process's own registry is served.
"""

import bisect
import collections
import functools
import os

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .turns import EndOfTurn


class Durations(Histogram):
    """A Histogram that also takes many observations at once."""

    def observe_all(self, amounts: list[float]) -> None:
        """What observe(amount) for each amount does, in one write per bucket it touches
        and one to the sum: in multiprocess mode each write locks, asks the kernel for the
        pid and writes the metrics file. The sum may differ in its last bits from adding
        the amounts one by one: sum() rounds them in another order."""
        in_bucket = [0] * len(self._upper_bounds)
        for amount in amounts:  # the first bucket whose bound >= amount
            in_bucket[bisect.bisect_left(self._upper_bounds, amount)] += 1
        for bucket, count in enumerate(in_bucket):
            if count:
                self._buckets[bucket].inc(count)
        self._sum.inc(sum(amounts))


class Answers(Counter):
    """A Counter whose labelled series can also count one answer with a single call."""

    def count_one(self) -> None:
        """inc() on a labelled series (not on the metric itself), without its three calls
        that check the labels and the amount: it runs on every request. It uses
        prometheus_client's `_value`, which every series has; tests/test_metrics.py fails
        if a release renames it."""
        self._value.inc(1)


REQUESTS = Answers("http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
DURATION = Durations(
    "http_request_duration_seconds",
    "Time from request to the end of the response.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Summed over live workers only: a dead worker's requests are no longer in progress. Labelled,
# so that no sample (and no file in PROMETHEUS_MULTIPROC_DIR) exists before a worker answers:
# a master that preloads the app imports this before it creates that directory.
IN_PROGRESS = Gauge(
    "http_requests_in_progress",
    "HTTP requests being answered.",
    ["method"],
    multiprocess_mode="livesum",
)
# Requests turned away before the app saw them (an oversized or slow head, a stalled body)
# or without running it (the worker at its limit of concurrent requests).
REFUSED = Counter(
    "http_requests_refused_total",
    "HTTP requests refused by the server, by reason.",
    ["reason"],
)

# The labelled series, each looked up once: `labels()` validates and locks on every call,
# a measurable share of a fast request's time. Routes and methods are few, so are these.
answered = functools.cache(REQUESTS.labels)
timed = functools.cache(DURATION.labels)
in_progress = functools.cache(IN_PROGRESS.labels)
refused = functools.cache(REFUSED.labels)


class RequestMetrics:
    """What the middleware records of each request, in one worker.

    An answer is counted by itself, as it starts: a client never holds an uncounted answer,
    even from a worker killed the next instant. The durations and the in-progress gauge are
    written once a turn of the event loop (turns.py): in multiprocess mode every write locks
    and writes a memory-mapped file, and per request those writes were over half of what
    observing a request cost. A scrape sees the gauge as the last turn left it; a worker
    killed mid-turn loses that turn's durations, as it loses its access lines. Call it from
    the event loop only.
    """

    def __init__(self) -> None:
        self._running: collections.Counter[str] = collections.Counter()  # method -> requests
        self._in_gauge: dict[str, int] = {}  # method -> what the gauge was last set to
        self._durations: collections.defaultdict[tuple[str, str], list[float]] = (
            collections.defaultdict(list)  # (method, route) -> seconds
        )
        self._turn = EndOfTurn(self.flush)

    def started(self, method: str) -> None:
        self._running[method] += 1
        self._turn.schedule()

    def answered(self, method: str, route: str, status: int) -> None:
        answered(method, route, status).count_one()

    def refused(self, reason: str) -> None:
        refused(reason).inc()

    def finished(self, method: str, route: str, seconds: float) -> None:
        self._running[method] -= 1
        self._durations[method, route].append(seconds)
        self._turn.schedule()

    def flush(self) -> None:
        for method, running in self._running.items():
            if self._in_gauge.get(method) != running:
                in_progress(method).set(running)
                self._in_gauge[method] = running
        durations, self._durations = self._durations, collections.defaultdict(list)
        for (method, route), seconds in durations.items():
            timed(method, route).observe_all(seconds)


router = APIRouter(tags=["health"])


# Not in the API's schema: served on the metrics port only (METRICS_PORT), never to clients.
@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # A plain def: reading every worker's files is blocking I/O, so it runs in the threadpool.
    server = request.scope.get("server")
    if server is None or server[1] != request.app.state.settings.metrics_port:
        raise HTTPException(status.HTTP_404_NOT_FOUND)
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
