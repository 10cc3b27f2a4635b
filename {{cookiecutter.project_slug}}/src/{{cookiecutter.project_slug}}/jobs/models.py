import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Enum, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime

FILENAME_MAX_LENGTH = 255
ERROR_MAX_LENGTH = 1000


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _now() -> datetime:
    return datetime.now(UTC)


class Job(Base):
    __tablename__ = "jobs"
    # The sweeper looks for unfinished jobs among all the finished ones, on every sweep.
    __table_args__ = (Index(None, "status", "queued_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda e: [*map(str, e)]),
        default=JobStatus.QUEUED,
    )
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX_LENGTH))
    # The upload itself: a worker on any host reads it from here, not from a local disk.
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(ERROR_MAX_LENGTH))
    # Tries at the job: each delivery to a worker, and each time its message was lost and it
    # was queued again. More than one means a worker or a message was lost on the way.
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    # When the job was last put on the broker: the sweeper judges a queued job's wait by it.
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
