"""The Celery worker: `celery --app {{ cookiecutter.project_slug }}.jobs.celery_app worker` (or `make worker`).

Each job is claimed in the database, computed in this process (the CPU-heavy part, off
any event loop), and its outcome recorded. Expected failures (bad rows, the soft time
limit) are recorded as failed jobs with a message; anything else is too, by `on_failure`.
"""

import os
import tempfile

# Every process of the worker counts its tasks in files in one directory, which the worker's
# metrics endpoint sums (metrics.py). prometheus_client reads the variable once, as it is
# imported: it is set before anything imports it.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(
        "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),  # noqa: S108
        f"{{ cookiecutter.project_slug }}-worker-metrics-{os.getpid()}",
    ),
)

import asyncio
import logging.config
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from billiard.einfo import ExceptionInfo
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.ext.asyncio import AsyncSession

from .. import db
from ..serving.logs import logging_config
from ..settings import get_settings
from . import csvstats, metrics, service
from .broker import AGGREGATE_CSV, create_celery, warn_if_not_durable

T = TypeVar("T")

settings = get_settings()  # exits with one readable line if the configuration is wrong
app = create_celery(settings, worker=True)
logger = logging.getLogger(__name__)


@signals.setup_logging.connect
def _json_logs(**_: Any) -> None:
    logging.config.dictConfig(logging_config(settings.log_level))


@signals.worker_init.connect
def _warn(**_: Any) -> None:
    warn_if_not_durable(settings)


@signals.worker_init.connect
def _serve_metrics(sender: Any, **_: Any) -> None:
    # On loopback in development, as Gunicorn binds; to the scraper otherwise.
    host = "127.0.0.1" if settings.environment == "development" else "0.0.0.0"  # noqa: S104
    metrics.serve_worker_metrics(app, sender.hostname, host, settings.celery.metrics_port)


def in_database(operation: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run one service operation in a session of its own.

    Each call has its own event loop, so the engine is made for it and disposed after:
    connections never outlive the loop they were opened on.
    """

    async def run() -> T:
        engine = db.create_engine(settings, pooled=False)
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                return await operation(session, *args)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def record(job_id: uuid.UUID, result: dict[str, Any] | None, error: str | None = None) -> None:
    metrics.job_finished(in_database(service.finish, job_id, result, error), error)


class JobTask(Task):  # type: ignore[type-arg]
    Request = "{{ cookiecutter.project_slug }}.jobs.metrics:CountedRequest"

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Unexpected failures and the hard time limit: the job is recorded failed anyway."""
        if isinstance(exc, TimeLimitExceeded):
            error = f"stopped at the hard time limit of {settings.celery.time_limit} s"
        else:
            error = f"the job failed unexpectedly ({type(exc).__name__}); see the worker's log"
        logger.error("job %s failed: %r", args[:1], exc)
        try:
            record(uuid.UUID(args[0]), None, error)
        except Exception:
            logger.exception("could not record the failure of job %s", args[:1])


@app.task(name=AGGREGATE_CSV, base=JobTask)
def aggregate_csv(job_id: str) -> None:
    job = uuid.UUID(job_id)
    data = in_database(service.claim, job, settings.celery.max_attempts)
    if data is None:
        return
    try:
        result = csvstats.aggregate(data)
    except csvstats.CsvProblem as problem:
        record(job, None, str(problem))
    except SoftTimeLimitExceeded:
        limit = settings.celery.soft_time_limit
        record(job, None, f"took longer than the time limit of {limit} s")
    else:
        record(job, result)
