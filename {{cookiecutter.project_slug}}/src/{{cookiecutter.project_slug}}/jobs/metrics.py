"""Celery's metrics, under the names and labels of danihodovic/celery-exporter, so that its
Grafana dashboards and alerts work here too; counted by the processes that see each event
rather than by an exporter listening to Celery's events.

Where each is counted and served:
- `celery_task_sent_total`: by the process that published the task (an API worker), so
  in the API's /metrics.
- `celery_task_received_total` ... `celery_task_rejected_total`, `celery_task_runtime`,
  `celery_task_queue_wait_seconds`, `jobs_finished_total`, `celery_worker_up`: by the
  Celery worker's main process and its pool processes, which write to one
  PROMETHEUS_MULTIPROC_DIR (celery_app.py sets it); the worker's main process serves their
  sum on CELERY_METRICS_PORT (9465), so a pool process killed outright loses no count.
- `celery_queue_length{queue_name}`: read from the broker at each scrape of the API's
  /metrics (the API runs wherever the service does, even with no worker up).

Every series a worker or the API can count exists at 0 from its start (task names and
queues are known), so rate() sees the first task. `celery_task_failed_total` has no
`exception` label, unlike celery-exporter's: a new exception would start a series at 1,
which rate() cannot see; the worker's log names the exception.
"""

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from celery import Celery, Task, signals
from celery.utils.nodenames import nodesplit
from celery.worker.request import Request
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from . import broker

logger = logging.getLogger(__name__)

LABELS = ["name", "hostname", "queue_name"]
SENT = Counter("celery_task_sent", "Sent when a task message is published.", LABELS)
RECEIVED = Counter("celery_task_received", "Sent when the worker receives a task.", LABELS)
STARTED = Counter("celery_task_started", "Sent just before the worker executes the task.", LABELS)
SUCCEEDED = Counter("celery_task_succeeded", "Sent if the task executed successfully.", LABELS)
FAILED = Counter("celery_task_failed", "Sent if the execution of the task failed.", LABELS)
RETRIED = Counter(
    "celery_task_retried", "Sent if the task failed, but will be retried in the future.", LABELS
)
REJECTED = Counter(
    "celery_task_rejected",
    "The task was rejected by the worker, possibly to be re-queued or moved to a dead "
    "letter queue.",
    LABELS,
)
# Seconds, up to the longest time limit a profile sets.
RUNTIME = Histogram(
    "celery_task_runtime",
    "Histogram of task runtime measurements.",
    LABELS,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
QUEUE_WAIT = Histogram(
    "celery_task_queue_wait_seconds",
    "Seconds from a task's publishing to a worker process starting it.",
    LABELS,
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600),
)
WORKER_UP = Gauge(
    "celery_worker_up",
    "1 while the worker takes tasks, 0 from the start of its shutdown.",
    ["hostname"],
    multiprocess_mode="livemax",
)
# A job's outcome as recorded in the jobs table: a job whose input has bad rows is a task
# that succeeded and a job that failed.
JOBS_FINISHED = Counter("jobs_finished", "Jobs whose outcome a worker recorded.", ["status"])
JOB_STATUSES = ("succeeded", "failed")

# The message header that carries when a task was published, for the queue wait. Clocks of
# the publishing and the working host both count: keep them in sync (NTP).
SENT_AT = "sent_at"


def tasks_and_queues(celery: Celery) -> Iterator[tuple[str, str]]:
    """Every task the app routes, and the queue it goes to."""
    default = celery.conf.task_default_queue
    for name, route in celery.conf.task_routes.items():
        yield name, route.get("queue", default)


def _queue(task: Task, delivery_info: Mapping[str, object] | None) -> str:  # type: ignore[type-arg]
    """The queue the task came from; where the app routes it, if the worker no longer knows
    (the failure of a task that hit its hard time limit)."""
    if queue := (delivery_info or {}).get("routing_key"):
        return str(queue)
    route = task.app.conf.task_routes.get(str(task.name), {})
    return str(route.get("queue", task.app.conf.task_default_queue))


# The API's side -----------------------------------------------------------------------


def count_sent_from_zero(celery: Celery) -> None:
    for name, queue in tasks_and_queues(celery):
        SENT.labels(name, socket.gethostname(), queue)


@signals.before_task_publish.connect
def _stamp(headers: dict[str, Any], **_: Any) -> None:
    headers.setdefault(SENT_AT, time.time())


@signals.after_task_publish.connect
def _sent(sender: str, routing_key: str, **_: Any) -> None:
    SENT.labels(sender, socket.gethostname(), routing_key).inc()


class QueueLengths:
    """`celery_queue_length{queue_name}`: messages waiting in each of the app's queues, read
    from the broker (Redis, RabbitMQ or the embedded one) as Prometheus scrapes. No sample
    while the broker cannot be reached: the readiness check reports that."""

    def __init__(self, celery: Callable[[], Celery | None]) -> None:
        self.celery = celery  # the API worker's Celery app, made as its lifespan starts

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        celery = self.celery()
        if celery is None:  # not started yet
            yield family
            return
        queues = sorted({queue.name for queue in celery.conf.task_queues})
        try:
            with celery.connection_for_write() as connection:
                for queue in queues:
                    family.add_metric([queue], broker.messages_in(connection, queue))
        except (OperationalError, OSError) as error:
            logger.warning("queue lengths not read: the broker did not answer (%r)", error)
            family = self._family()
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "celery_queue_length", "The number of message in broker queue.", labels=["queue_name"]
        )


# The worker's side --------------------------------------------------------------------


class CountedRequest(Request):
    """A task request that counts its rejection (a lost pool process's task given back to
    the broker), which no Celery signal reports. Celery's documented way to extend a
    request: a task's `Request` attribute."""

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged:
            REJECTED.labels(self.name, _hostname, _queue(self.task, self.delivery_info)).inc()
        super().reject(requeue)


_hostname = socket.gethostname()  # the host part of the worker's node name, once it starts
_started: dict[str, float] = {}  # task id -> when its run started, in the pool process
_server: Any = None  # the worker's metrics endpoint, in its main process


def serve_worker_metrics(celery: Celery, node_name: str, host: str, port: int) -> None:
    """Start counting from zero in a fresh PROMETHEUS_MULTIPROC_DIR and serve the sum of
    every process's files on `port`. Call it in the worker's main process, before the pool
    starts; `node_name` is the worker's (celery@host)."""
    global _server, _hostname
    _hostname = nodesplit(node_name)[1]
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(metrics_dir, ignore_errors=True)
    remove_dead_workers_dirs(metrics_dir)
    metrics_dir.mkdir(parents=True)
    for name, queue in tasks_and_queues(celery):
        for counter in (RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REJECTED, SENT):
            counter.labels(name, _hostname, queue)
        RUNTIME.labels(name, _hostname, queue)
        QUEUE_WAIT.labels(name, _hostname, queue)
    for status in JOB_STATUSES:
        JOBS_FINISHED.labels(status)
    WORKER_UP.labels(_hostname).set(0)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        _server, _ = start_http_server(port, host, registry)
    except OSError as error:
        # The worker's job is the jobs: it runs on without its metrics rather than not at all.
        logger.error("worker metrics not served on %s:%s: %s", host, port, error)


def remove_dead_workers_dirs(metrics_dir: Path) -> None:
    """Remove the directories that workers on this host killed with SIGKILL could not: those
    named as celery_app.py names this one (`<name>-<pid>`, the pid this process's) whose
    process is gone. A directory set by hand (PROMETHEUS_MULTIPROC_DIR) is left to its owner."""
    stem, _, pid = metrics_dir.name.rpartition("-")
    if pid != str(os.getpid()):
        return
    for other in metrics_dir.parent.glob(f"{stem}-*"):
        other_pid = other.name.removeprefix(f"{stem}-")
        if other != metrics_dir and other_pid.isdigit() and not _alive(int(other_pid)):
            shutil.rmtree(other, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


@signals.worker_process_init.connect
def _not_serving(**_: Any) -> None:
    # A pool process has a copy of the main process's listening socket: closing it here
    # frees the port as soon as the main process goes, even while this one lives on.
    if _server is not None:
        _server.socket.close()


@signals.worker_ready.connect
def _up(**_: Any) -> None:
    WORKER_UP.labels(_hostname).set(1)


@signals.worker_shutting_down.connect
def _down(**_: Any) -> None:
    WORKER_UP.labels(_hostname).set(0)


@signals.worker_shutdown.connect
def _gone(**_: Any) -> None:
    if _server is not None:
        _server.shutdown()
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


@signals.task_received.connect
def _received(request: Request, **_: Any) -> None:
    RECEIVED.labels(request.name, _hostname, _queue(request.task, request.delivery_info)).inc()


def _labels(task: Task) -> tuple[str, str, str]:  # type: ignore[type-arg]
    return task.name, _hostname, _queue(task, task.request.delivery_info)


@signals.task_prerun.connect
def _started_run(task_id: str, task: Task, **_: Any) -> None:  # type: ignore[type-arg]
    now = time.time()
    _started[task_id] = time.perf_counter()
    STARTED.labels(*_labels(task)).inc()
    sent_at = getattr(task.request, SENT_AT, None)
    if isinstance(sent_at, int | float):
        QUEUE_WAIT.labels(*_labels(task)).observe(max(0.0, now - sent_at))


@signals.task_postrun.connect
def _finished_run(task_id: str, **_: Any) -> None:
    _started.pop(task_id, None)


@signals.task_success.connect
def _succeeded(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    SUCCEEDED.labels(*_labels(sender)).inc()
    started = _started.get(str(sender.request.id))
    if started is not None:
        RUNTIME.labels(*_labels(sender)).observe(time.perf_counter() - started)


@signals.task_failure.connect
def _failed(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    FAILED.labels(*_labels(sender)).inc()


@signals.task_retry.connect
def _retried(sender: Task, **_: Any) -> None:  # type: ignore[type-arg]
    RETRIED.labels(*_labels(sender)).inc()


def job_finished(recorded: bool, error: str | None) -> None:
    """Count a job's outcome, if this run is the one that recorded it."""
    if recorded:
        JOBS_FINISHED.labels("failed" if error else "succeeded").inc()
