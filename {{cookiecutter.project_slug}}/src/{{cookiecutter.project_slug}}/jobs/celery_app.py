"""The Celery worker: `celery --app {{ cookiecutter.project_slug }}.jobs.celery_app worker` (or `make worker`).

Each job is claimed in the database, computed in this process (the CPU-heavy part, off
any event loop), and its outcome recorded. Expected failures (bad rows, the soft time
limit) are recorded as failed jobs with a message; anything else is too, by `on_failure`.
"""

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
from . import csvstats, service
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


class JobTask(Task):  # type: ignore[type-arg]
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
            in_database(service.finish, uuid.UUID(args[0]), None, error)
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
        in_database(service.finish, job, None, str(problem))
    except SoftTimeLimitExceeded:
        limit = settings.celery.soft_time_limit
        in_database(service.finish, job, None, f"took longer than the time limit of {limit} s")
    else:
        in_database(service.finish, job, result)
