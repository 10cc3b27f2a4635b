"""Jobs in the database: the API creates and reads them, Celery workers claim and finish them.

Claim and finish are each one conditional UPDATE, so the database settles every race: a
job redelivered after it finished is not claimed again, and only the first outcome of a
job that ran twice is recorded.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import delete, update
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
        lost = f"gave up after {max_attempts} attempts: the worker running it was lost each time"
        await finish(session, job_id, error=lost)
        return None
    return data


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record the outcome, unless another run of the same job recorded one first."""
    await session.execute(
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


def _now() -> datetime:
    return datetime.now(UTC)
