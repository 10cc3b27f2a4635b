import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from .models import JobStatus


class JobAccepted(BaseModel):
    id: uuid.UUID
    status: JobStatus
    status_url: str


class GroupStatistics(BaseModel):
    count: int
    sum: float
    mean: float
    min: float
    max: float
    stdev: float
    median: float
    p95: float


class JobResult(BaseModel):
    rows: int
    groups: dict[str, GroupStatistics]


class JobOut(BaseModel):
    """A job's state; `result` once it succeeded, `error` once it failed."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: JobStatus
    filename: str
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: str | None = None
