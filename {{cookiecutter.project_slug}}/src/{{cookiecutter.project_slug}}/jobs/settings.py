"""The jobs' settings: the broker, how Celery workers run the jobs (`[celery]` in the
profiles, CELERY_<KEY> in the environment), and the API's side of the jobs."""

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from ..db_settings import DatabaseSettings
from ..service_settings import EmptyIsUnset

BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "sqla+sqlite://")


class CelerySettings(BaseModel):
    """How the Celery workers run the jobs."""

    model_config = ConfigDict(frozen=True)

    processes_per_cpu: PositiveInt
    # Worker processes per Celery worker; default: processes_per_cpu per usable CPU.
    concurrency: Annotated[int | None, EmptyIsUnset] = Field(default=None, ge=1)
    queue: str
    prefetch_multiplier: PositiveInt
    soft_time_limit: int = Field(ge=1)
    time_limit: int = Field(ge=1)
    visibility_timeout: int = Field(ge=1)
    max_attempts: PositiveInt
    max_tasks_per_child: PositiveInt
    max_memory_per_child_kib: PositiveInt
    # The port each Celery worker serves its Prometheus metrics on (jobs/metrics.py).
    metrics_port: int = Field(ge=1, le=65535)

    def processes_for(self, cpus: int) -> int:
        return self.concurrency or self.processes_per_cpu * cpus


class JobSettings(DatabaseSettings):
    # Celery's broker: redis://... or amqp://... in production. The default keeps queued
    # jobs in a SQLite file: fine on a laptop, not durable (a killed worker loses its job).
    # On Redis, Celery's keys start with REDIS_KEY_PREFIX too: jobs queued under one prefix
    # are not seen under another, so drain the queue before changing it.
    celery_broker_url: str = "sqla+sqlite:///./var/celery-broker.db"
    celery: CelerySettings
    # Seconds before a queued or running job whose message or worker was lost is queued again.
    job_stale_after: int = Field(ge=1)
    # Seconds POST /jobs waits for the broker before it answers 503.
    job_publish_timeout: float = Field(gt=0)
    # The largest CSV upload POST /jobs accepts, in bytes.
    max_upload_size: int = Field(ge=1)

    @field_validator("celery_broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(BROKER_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(BROKER_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _time_limits_nest(self) -> Self:
        celery = self.celery
        if not celery.soft_time_limit < celery.time_limit:
            raise ValueError("CELERY_SOFT_TIME_LIMIT must be below CELERY_TIME_LIMIT")
        if not celery.time_limit < celery.visibility_timeout:
            raise ValueError(
                "CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TIME_LIMIT, "
                "or a job still running would be handed to a second worker"
            )
        if not celery.time_limit < self.job_stale_after:
            raise ValueError(
                "JOB_STALE_AFTER must exceed CELERY_TIME_LIMIT, "
                "or a job still running would be queued again"
            )
        return self
