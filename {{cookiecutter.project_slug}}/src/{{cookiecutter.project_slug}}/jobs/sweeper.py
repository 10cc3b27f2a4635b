"""The sweeper: no job stays queued or running for good after its message or worker was lost.

A broker that restarts without its data loses the queued messages; a Celery worker killed
outright loses the jobs it was running until the broker gives them back (RabbitMQ at once,
Redis after the visibility timeout, the embedded broker never). The job table still knows
them: every JOB_STALE_AFTER or so the sweeper queues them again, or records them failed
once max_attempts is spent (service.sweep decides which).

It runs in every API worker process, the one kind of process every deployment of the
service has; a sweep on PostgreSQL first takes an advisory lock, so one sweep runs at a
time however many replicas share the database. What it did is counted in
`jobs_swept_total{outcome="requeued"|"failed"}`.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from celery import Celery
from fastapi import FastAPI
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..blocking import call_blocking
from ..settings import Settings
from . import broker, service

logger = logging.getLogger(__name__)

# Counted by the API worker that swept them, so /metrics has them at once.
JOBS_SWEPT = Counter(
    "jobs_swept_total",
    "Jobs whose message or worker was lost: queued again, or recorded failed.",
    ["outcome"],
)
OUTCOMES = ("requeued", "failed")


def sweep_interval(stale_after: float) -> float:
    """Seconds between sweeps: a tenth of the bound, so a lost job waits little beyond it."""
    return min(60.0, max(1.0, stale_after / 10))


async def sweep_once(
    celery: Celery, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> service.Swept:
    # Not while the broker is unreachable: the sweep could put nothing back on it anyway,
    # and would spend the jobs' attempts on an outage.
    waiting = await call_blocking(broker.waiting, celery)
    async with sessions() as session:
        swept = await service.sweep(
            session,
            stale_after=settings.job_stale_after,
            waiting=waiting,
            max_attempts=settings.celery.max_attempts,
        )
    for job_id in swept.requeued:
        await call_blocking(broker.enqueue, celery, job_id)
    for outcome, jobs in zip(OUTCOMES, (swept.requeued, swept.failed), strict=True):
        if jobs:
            JOBS_SWEPT.labels(outcome).inc(len(jobs))
            logger.warning("%s %d jobs whose message or worker was lost", outcome, len(jobs))
    return swept


async def _sweep_forever(
    celery: Celery, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    every = sweep_interval(settings.job_stale_after)
    while True:
        await asyncio.sleep(every)
        try:
            await sweep_once(celery, sessions, settings)
        except Exception:
            # A broker or database that is down now: the next sweep tries again.
            logger.exception("the sweep for lost jobs failed")


@asynccontextmanager
async def sweeping(app: FastAPI) -> AsyncIterator[None]:
    """Sweeps while the worker serves (jobs/feature.py has made the Celery app and sessions)."""
    for outcome in OUTCOMES:  # exported at 0, so rate() sees the first sweep
        JOBS_SWEPT.labels(outcome)
    task = asyncio.create_task(
        _sweep_forever(app.state.celery, app.state.sessions, app.state.settings)
    )
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
