"""The Celery app as both sides see it: the API sends jobs with it, workers run them.

Everything here is fixed on purpose, for correctness; what is tuned per scenario comes
from the settings (`[celery]` in the profiles).
"""

import logging
import uuid
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError
from kombu.transport import virtual

from ..serving.cpu import effective_cpu_count
from ..settings import Settings

AGGREGATE_CSV = "jobs.aggregate_csv"

logger = logging.getLogger(__name__)


# Seconds a worker waits on the broker before it calls the connection lost and reconnects.
WORKER_BROKER_TIMEOUT = 5
# Tries at one publish: a second one on a fresh connection, in case the pooled one had
# gone stale (a broker that restarted).
PUBLISH_TRIES = 2


def create_celery(settings: Settings, *, worker: bool = False) -> Celery:
    """The Celery app of the API (it publishes jobs), or, with `worker`, of a Celery worker."""
    celery = Celery(__package__)
    heavy = settings.celery.queue
    # A request waits for the broker at most JOB_PUBLISH_TIMEOUT in all, then gets a 503: a
    # hung broker (one that accepts connections and never answers) must not hold it longer.
    wait = WORKER_BROKER_TIMEOUT if worker else settings.job_publish_timeout / PUBLISH_TRIES
    celery.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=wait,
        broker_transport_options=_transport_options(settings, wait),
        task_publish_retry_policy={"max_retries": PUBLISH_TRIES - 1, "interval_start": 0},
        # JSON only: a message can never carry a pickle to execute.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Outcomes live in the jobs table; nothing reads Celery's results.
        task_ignore_result=True,
        # Acknowledge a job only once it is done, and give it back if its process dies:
        # a killed worker loses no job (the job table makes the second run harmless).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.celery.prefetch_multiplier,
        task_soft_time_limit=settings.celery.soft_time_limit,
        task_time_limit=settings.celery.time_limit,
        worker_max_tasks_per_child=settings.celery.max_tasks_per_child,
        worker_max_memory_per_child=settings.celery.max_memory_per_child_kib,
        worker_concurrency=settings.celery.processes_for(effective_cpu_count().count),
        task_queues=[Queue("default"), Queue(heavy)],
        task_default_queue="default",
        task_routes={AGGREGATE_CSV: {"queue": heavy}},
        # Keep the service's JSON logs (celery_app.py sets them up).
        worker_hijack_root_logger=False,
    )
    return celery


def _transport_options(settings: Settings, wait: float) -> dict[str, float | str]:
    if not settings.celery_broker_url.startswith(("redis://", "rediss://")):
        # RabbitMQ gives a lost worker's jobs back as soon as its connection drops. (The
        # embedded broker would hand these options to SQLAlchemy, which refuses them.)
        return {}
    # Redis gives a job taken by a vanished worker to another after the visibility timeout;
    # look for such jobs every tenth of it, not every 100 s as kombu does by default.
    return {
        "visibility_timeout": settings.celery.visibility_timeout,
        "unacked_restore_interval": max(1, settings.celery.visibility_timeout // 10),
        "unacked_restore_throttle": 1,
        # A broker that vanished without closing the connection fails a publish, not hangs it.
        "socket_timeout": wait,
        "socket_connect_timeout": wait,
        # Queues, bindings and channels under the service's own prefix on a shared Redis.
        "global_keyprefix": settings.redis_key_prefix,
    }


def enqueue(celery: Celery, job_id: uuid.UUID) -> None:
    """Put the job on the broker; raises kombu's OperationalError if it cannot be reached."""
    celery.send_task(AGGREGATE_CSV, args=[str(job_id)])


def waiting(celery: Celery) -> int:
    """How many jobs wait on the broker, not yet taken by a worker."""
    heavy: str = celery.conf.task_routes[AGGREGATE_CSV]["queue"]
    with celery.connection_for_write() as connection:
        return messages_in(connection, heavy)


def messages_in(connection: Any, queue: str) -> int:
    """How many messages wait in `queue`, on an open connection to the broker."""
    no_such_queue: tuple[type[BaseException], ...] = (ChannelError, *connection.channel_errors)
    # Every transport's channel has queue_declare; kombu's stubs know the AMQP one alone.
    channel: Any = connection.default_channel
    # Passive on RabbitMQ, where declaring with other arguments than the worker's would fail.
    # Kombu's own transports (Redis, SQLite) declare nothing on the server, and their passive
    # check misses a queue under a Redis key prefix (kombu's EXISTS is not prefixed): 0.
    passive = not isinstance(channel, virtual.Channel)
    try:
        declared = channel.queue_declare(queue, passive=passive)
    except no_such_queue:
        return 0  # not declared yet, or gone with the broker's data: nothing waits
    return int(declared.message_count)


def ping(celery: Celery) -> None:
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def warn_if_not_durable(settings: Settings) -> None:
    if settings.celery_broker_url.startswith("sqla+"):
        logger.warning(
            "jobs are queued in a SQLite file (CELERY_BROKER_URL=%s): not durable, a worker "
            "killed mid-job loses that job; set CELERY_BROKER_URL to Redis or RabbitMQ",
            settings.celery_broker_url,
        )
