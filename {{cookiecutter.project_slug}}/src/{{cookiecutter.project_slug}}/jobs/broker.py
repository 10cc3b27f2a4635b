"""The Celery app as both sides see it: the API sends jobs with it, workers run them.

Everything here is fixed on purpose, for correctness; what is tuned per scenario comes
from the profile's `[celery]` table and the settings.
"""

import logging
import uuid

from celery import Celery
from kombu import Queue

from ..cpu import effective_cpu_count
from ..profile import PROFILE
from ..settings import Settings

AGGREGATE_CSV = "jobs.aggregate_csv"

logger = logging.getLogger(__name__)


def create_celery(settings: Settings) -> Celery:
    celery = Celery(__package__)
    heavy = PROFILE.celery.queue
    celery.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options=_transport_options(settings),
        # A publish to a broker that is down fails within about a second, as a 503.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3},
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
        worker_prefetch_multiplier=PROFILE.celery.prefetch_multiplier,
        task_soft_time_limit=settings.celery_soft_time_limit,
        task_time_limit=settings.celery_time_limit,
        worker_max_tasks_per_child=PROFILE.celery.max_tasks_per_child,
        worker_max_memory_per_child=PROFILE.celery.max_memory_per_child_kib,
        worker_concurrency=settings.celery_concurrency
        or PROFILE.celery.processes_for(effective_cpu_count().count),
        task_queues=[Queue("default"), Queue(heavy)],
        task_default_queue="default",
        task_routes={AGGREGATE_CSV: {"queue": heavy}},
        # Keep the service's JSON logs (celery_app.py sets them up).
        worker_hijack_root_logger=False,
    )
    return celery


def _transport_options(settings: Settings) -> dict[str, int | str]:
    if not settings.celery_broker_url.startswith(("redis://", "rediss://")):
        # RabbitMQ gives a lost worker's jobs back as soon as its connection drops. (The
        # embedded broker would hand these options to SQLAlchemy, which refuses them.)
        return {}
    # Redis gives a job taken by a vanished worker to another after the visibility timeout;
    # look for such jobs every tenth of it, not every 100 s as kombu does by default.
    return {
        "visibility_timeout": settings.celery_visibility_timeout,
        "unacked_restore_interval": max(1, settings.celery_visibility_timeout // 10),
        "unacked_restore_throttle": 1,
        # A broker that vanished without closing the connection fails a publish, not hangs it.
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        # Queues, bindings and channels under the service's own prefix on a shared Redis.
        "global_keyprefix": settings.redis_key_prefix,
    }


def enqueue(celery: Celery, job_id: uuid.UUID) -> None:
    """Put the job on the broker; raises kombu's OperationalError if it cannot be reached."""
    celery.send_task(AGGREGATE_CSV, args=[str(job_id)])


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
