"""Prometheus metrics that stay right across Gunicorn workers.

Each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py before any worker starts); /metrics sums the files of every worker,
those of workers that died or were recycled included, so counters never go backwards.
Without the variable (a test, a single process) the process's own registry is served.
"""

import functools
import os

from fastapi import APIRouter, Response
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

REQUESTS = Counter("http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
DURATION = Histogram(
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

# The labelled series, each looked up once: `labels()` validates and locks on every call,
# a measurable share of a fast request's time. Routes and methods are few, so are these.
answered = functools.cache(REQUESTS.labels)
timed = functools.cache(DURATION.labels)
in_progress = functools.cache(IN_PROGRESS.labels)

router = APIRouter(tags=["health"])


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
def metrics() -> Response:
    # A plain def: reading every worker's files is blocking I/O, so it runs in the threadpool.
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
