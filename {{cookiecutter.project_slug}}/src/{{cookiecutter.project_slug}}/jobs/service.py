"""Jobs in the database: the API creates and reads them, Celery workers claim and finish them.

Claim, finish and each change the sweeper makes are one conditional UPDATE, so the
database settles every race: a job redelivered after it finished is not claimed again,
only the first outcome of a job that ran twice is recorded, and a job a worker claims
while the sweeper looks at it is left to that worker.
"""

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ERROR_MAX_LENGTH, Job, JobStatus

UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


class JobNotFound(HTTPException):
    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(status.HTTP_404_NOT_FOUND, f"job {job_id} does not exist")


async def create_job(session: AsyncSession, filename: str, data: bytes) -> Job:
    job = Job(filename=filename, data=data)
    session.add(job)
    await session.commit()
    return job


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> Job:
    job = await session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


async def delete_job(session: AsyncSession, job_id: uuid.UUID) -> None:
    await session.execute(delete(Job).where(Job.id == job_id))
    await session.commit()


async def claim(session: AsyncSession, job_id: uuid.UUID, max_attempts: int) -> bytes | None:
    """Mark the job running and return its input; None if there is nothing left to do."""
    claimed = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(UNFINISHED))
        .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=_now())
        .returning(Job.data, Job.attempts)
    )
    row = claimed.one_or_none()
    await session.commit()
    if row is None:
        return None  # finished already (a redelivery), or unknown to this database
    data, attempts = row
    if attempts > max_attempts:
        await finish(session, job_id, error=gave_up(JobStatus.RUNNING, max_attempts))
        return None
    return data


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Record the outcome, unless another run of the same job recorded one first; whether
    this call recorded it."""
    recorded = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(UNFINISHED))
        .values(
            status=JobStatus.FAILED if error else JobStatus.SUCCEEDED,
            result=result,
            error=error[:ERROR_MAX_LENGTH] if error else None,
            finished_at=_now(),
        )
    )
    await session.commit()
    return bool(recorded.rowcount)  # type: ignore[attr-defined]


# Jobs the sweeper changes at most in one sweep: one transaction stays short, and the next
# sweep takes the rest.
SWEEP_BATCH = 500


@dataclass
class Swept:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)


def gave_up(lost: JobStatus, max_attempts: int) -> str:
    """Why a job that lost its worker (running) or its message (queued) too often failed."""
    what = "the worker running it" if lost == JobStatus.RUNNING else "its queued message"
    return f"gave up after {max_attempts} attempts: {what} was lost each time"


def verdict(lost: JobStatus, attempts: int, max_attempts: int) -> str | None:
    """None if a stale job is to be queued again, else the error to record it failed with.

    Claims and the sweeper's re-queuings of lost messages share one budget of attempts, so
    neither a worker that keeps dying nor a broker that keeps losing messages can keep a job
    going for ever: queued again, the job must still have an attempt left for its delivery.
    """
    by_next_delivery = attempts + (1 if lost == JobStatus.RUNNING else 2)
    return gave_up(lost, max_attempts) if by_next_delivery > max_attempts else None


async def sweep(
    session: AsyncSession, *, stale_after: float, waiting: int, max_attempts: int
) -> Swept:
    """Queue again (or fail) the jobs whose message or worker was lost.

    Running for longer than `stale_after`: its worker is gone, since none runs a job past
    the hard time limit. Queued for longer: lost, unless it is among the `waiting` newest
    queued jobs, whose messages the broker still holds (a queue is first in, first out).
    Returns the jobs to put on the broker again, and those recorded failed.
    """
    swept = Swept()
    if not await _sweeping_alone(session):
        return swept
    now = _now()
    cutoff = now - timedelta(seconds=stale_after)
    newest_first = (
        select(Job.id, Job.queued_at)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.queued_at.desc())
        .offset(waiting)
        .subquery()
    )
    lost_messages = select(newest_first.c.id).where(newest_first.c.queued_at < cutoff)
    candidates = await session.execute(
        select(Job.id, Job.status, Job.attempts, Job.queued_at, Job.started_at)
        .where(
            Job.id.in_(lost_messages)
            | ((Job.status == JobStatus.RUNNING) & (Job.started_at < cutoff))
        )
        .limit(SWEEP_BATCH)
    )
    for job_id, lost, attempts, queued_at, started_at in candidates:
        # Unchanged since it was read: a worker that claimed it meanwhile keeps it.
        unchanged = (Job.id == job_id) & (Job.status == lost) & (Job.queued_at == queued_at)
        unchanged &= Job.started_at.is_not_distinct_from(started_at)
        error = verdict(lost, attempts, max_attempts)
        if error is None:
            values: dict[str, Any] = {"status": JobStatus.QUEUED, "queued_at": now}
            if lost == JobStatus.QUEUED:
                values["attempts"] = Job.attempts + 1
            outcome = swept.requeued
        else:
            values = {"status": JobStatus.FAILED, "error": error, "finished_at": now}
            outcome = swept.failed
        changed = await session.execute(update(Job).where(unchanged).values(values))
        if changed.rowcount:  # type: ignore[attr-defined]
            outcome.append(job_id)
    await session.commit()
    return swept


async def _sweeping_alone(session: AsyncSession) -> bool:
    """On PostgreSQL, take the sweep's lock for this transaction, unless another sweep holds
    it: many replicas share one database, and one sweep at a time is enough. (The lock is
    named after the schema, so services in other schemas sweep alongside.) SQLite serves
    one machine and lets one writer at a time through anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    name: ColumnElement[str] = func.concat("jobs sweep ", func.current_schema())
    return bool(await session.scalar(select(func.pg_try_advisory_xact_lock(func.hashtext(name)))))


def _now() -> datetime:
    return datetime.now(UTC)
