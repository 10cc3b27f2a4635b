"""Prometheus metrics that stay right across Gunicorn workers.

Each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py before any worker starts); /metrics sums the files of every worker,
those of workers that died or were recycled included, so counters never go backwards.
Without the variable (a test, a single process) the process's own registry is served.

The names, labels and status classes are prometheus-fastapi-instrumentator's (README.md,
"Metrics"), and every series a worker can count exists at 0 from its start
(`count_from_zero`), so that Prometheus's rate() sees the first answers of each.
"""

import bisect
import collections
import functools
import os
from collections.abc import Iterator
from typing import Literal, get_args

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

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


class Sizes(Summary):
    """A Summary that also takes many observations at once, as Durations does."""

    def observe_total(self, count: int, total: float) -> None:
        """What `count` calls of observe() adding up to `total` do, in at most two writes
        (one for bodiless requests, whose sizes add up to 0)."""
        self._count.inc(count)
        if total:
            self._sum.inc(total)


# The names, labels and status classes of prometheus-fastapi-instrumentator's default
# metrics, so that dashboards and alerts built for it work here (README.md, "Metrics").
REQUESTS = Counter(
    "http_requests_total",
    "Total number of requests by method, status and handler.",
    ["method", "status", "handler"],
)
DURATION = Durations(
    "http_request_duration_seconds",
    "Latency with only few buckets by handler.",
    ["method", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUEST_SIZE = Sizes(
    "http_request_size_bytes",
    "Content length of incoming requests by handler (0 without the header).",
    ["handler"],
)
RESPONSE_SIZE = Sizes(
    "http_response_size_bytes",
    "Content length of outgoing responses by handler (0 without the header).",
    ["handler"],
)
HIGHR_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5),
    *(7.5, 10, 30, 60),
)
# Summed over live workers only: a dead worker's requests are no longer in progress. Labelled,
# so that no sample (and no file in PROMETHEUS_MULTIPROC_DIR) exists before a worker answers:
# a master that preloads the app imports this before it creates that directory.
IN_PROGRESS = Gauge(
    "http_requests_inprogress",
    "Number of HTTP requests in progress.",
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
# Every reason the server refuses for: each series exists from a worker's start.
RefusalReason = Literal[
    "overloaded",  # past the worker's limit in flight or max_request_wait: 503 (admission.py)
    "draining",  # a WebSocket opened while the worker stops: 503
    "line_too_long",  # 414
    "too_many_headers",  # 431
    "header_too_large",  # 431
    "head_too_large",  # 431
    "header_timeout",  # 408
    "idle_timeout",  # a connection that sent nothing, closed
    "body_timeout",  # a body that stalled, closed
]


@functools.cache
def highr() -> Durations:
    """The latency of every answer in fine buckets, without labels, as the instrumentator
    has it. Made in the worker, when first used: an unlabelled metric opens its file in
    PROMETHEUS_MULTIPROC_DIR as it is made, and a master that preloads the app imports this
    module before it creates that directory."""
    return Durations(
        "http_request_duration_highr_seconds",
        "Latency with many buckets but no API specific labels.",
        buckets=HIGHR_BUCKETS,
    )


STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
# The handler of a request no route matched (the route the middleware passes is "unmatched").
UNMATCHED = "none"


def _handler(route: str) -> str:
    return UNMATCHED if route == "unmatched" else route


# The labelled series, each looked up once: `labels()` validates and locks on every call,
# a measurable share of a fast request's time. Routes, methods and statuses are few, so
# are these. A status is grouped into its class (404 -> "4xx") once, here.
@functools.cache
def answered(method: str, route: str, status: int) -> Counter:
    return REQUESTS.labels(method, f"{status // 100}xx", _handler(route))


@functools.cache
def timed(method: str, route: str) -> Durations:
    return DURATION.labels(method, _handler(route))


@functools.cache
def sized(route: str) -> tuple[Sizes, Sizes]:
    return REQUEST_SIZE.labels(_handler(route)), RESPONSE_SIZE.labels(_handler(route))


in_progress = functools.cache(IN_PROGRESS.labels)


@functools.cache
def refused(reason: RefusalReason) -> Counter:
    return REFUSED.labels(reason)


def routes_of(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, route template) for every HTTP route of the app, those of included routers
    with their prefix, and (method, "unmatched") for every method the routes take."""
    methods = set()
    for route in app.routes:
        # FastAPI's included routers list their routes, prefixed, through this method.
        contexts = getattr(route, "effective_route_contexts", None)
        for resolved in contexts() if callable(contexts) else [route]:
            path = getattr(resolved, "path", None)
            if not isinstance(path, str):
                continue  # not a route, nor a router of routes
            for method in getattr(resolved, "methods", None) or ():
                methods.add(method)
                yield method, path
    for method in sorted(methods):
        yield method, "unmatched"


def count_from_zero(app: FastAPI) -> None:
    """Make every series the app can answer with at 0, in this worker: every handler x
    method x status class, its durations and sizes, the in-progress gauge. A series that
    first appears with a value above 0 is invisible to Prometheus's rate() and increase()
    until its next change, and a ratio over a series that does not exist (5xx on a healthy
    service) is no data rather than 0. Call it in each worker, after the fork."""
    highr()
    for method, route in routes_of(app):
        for status_class in STATUS_CLASSES:
            answered(method, route, int(status_class[0]) * 100)
        timed(method, route)
        sized(route)
        in_progress(method).set(0)
    for reason in get_args(RefusalReason):
        refused(reason)


# Seconds between two writes of the durations, sizes and in-progress gauge of a busy worker.
WRITE_EVERY = 0.1


class RequestMetrics:
    """What the middleware records of each request, in one worker.

    In multiprocess mode every write locks and writes a memory-mapped file; per request,
    those writes were a measurable share of what observing a request cost. So the answers
    are counted as the turn of the event loop that started them ends (turns.py), once per
    series for all of that turn's answers, and the durations, sizes and in-progress gauge
    are written at most every WRITE_EVERY seconds. A scrape sees the latter as they were up
    to WRITE_EVERY ago (a scrape interval is seconds). A worker that exits counts and writes
    everything first; one killed with SIGKILL loses the counts of its last turn, as it loses
    that turn's access lines, and the durations and sizes of that last moment. Call it from
    the event loop only.
    """

    def __init__(self) -> None:
        self._running: collections.Counter[str] = collections.Counter()  # method -> requests
        # (method, route, seconds, request bytes, response bytes) of each finished request
        self._finished: list[tuple[str, str, float, int, int]] = []
        self._turn = EndOfTurn(self.flush, after=WRITE_EVERY)
        # (method, route, status) -> answers started this turn
        self._answered: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._answers_turn = EndOfTurn(self.count_answers)
        self._shed = 0  # requests shed this turn

    def started(self, method: str) -> None:
        self._running[method] += 1
        self._turn.schedule()  # and flush() again while any request runs: see there

    def answered(self, method: str, route: str, status: int) -> None:
        self._answered[method, route, status] += 1
        self._answers_turn.schedule()

    def count_answers(self) -> None:
        answers, self._answered = self._answered, collections.Counter()
        for (method, route, code), count in answers.items():
            answered(method, route, code).inc(count)
        if self._shed:
            refused("overloaded").inc(self._shed)
            self._shed = 0

    def shed(self, method: str) -> None:
        """A request answered 503 before the app saw it (admission.py): counted with the
        answers (its route unknown: "unmatched") and as refused, timed as taking no time."""
        self._answered[method, "unmatched", 503] += 1
        self._shed += 1
        self._answers_turn.schedule()
        self._finished.append((method, "unmatched", 0.0, 0, 0))
        self._turn.schedule()

    def finished(
        self, method: str, route: str, seconds: float, received: int = 0, sent: int = 0
    ) -> None:
        """`received` and `sent`: the request's and the response's Content-Length, or 0."""
        self._running[method] -= 1
        self._finished.append((method, route, seconds, received, sent))

    def flush(self) -> None:
        for method, running in self._running.items():
            in_progress(method).set(running)
        if any(self._running.values()):
            self._turn.schedule()  # those requests' durations are written once they finish
        finished, self._finished = self._finished, []
        durations: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        sizes: dict[str, list[int]] = collections.defaultdict(_no_sizes)
        for method, route, seconds, received, sent in finished:
            durations[method, route].append(seconds)
            of_route = sizes[route]
            of_route[0] += 1
            of_route[1] += received
            of_route[2] += sent
        for (method, route), seconds_each in durations.items():
            timed(method, route).observe_all(seconds_each)
        if finished:
            highr().observe_all([seconds for _, _, seconds, _, _ in finished])
        for route, (answers, received, sent) in sizes.items():
            request_size, response_size = sized(route)
            request_size.observe_total(answers, received)
            response_size.observe_total(answers, sent)


def _no_sizes() -> list[int]:
    return [0, 0, 0]


def collect_when_scraped(app: FastAPI, collector: Collector) -> None:
    """Serve, beside the workers' metrics, what `collector` reads at each scrape: a value
    only another service knows (a queue's length on the broker), read when asked."""
    if not hasattr(app.state, "scraped"):
        app.state.scraped = CollectorRegistry()
    app.state.scraped.register(collector)


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
    text = generate_latest(registry)
    if hasattr(request.app.state, "scraped"):
        text += generate_latest(request.app.state.scraped)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
