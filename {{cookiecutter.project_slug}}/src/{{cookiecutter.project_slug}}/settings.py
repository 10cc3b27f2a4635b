"""Run-time settings, read once from the environment (and `.env` when present)."""

from functools import lru_cache
{%- if cookiecutter.scenario == "ml_inference" %}
from pathlib import Path
{%- endif %}
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .profile import PROFILE

# Good enough on a laptop, refused in production; so is a secret shorter than this.
DEVELOPMENT_SECRET = "development-only-secret-change-me"  # noqa: S105
MIN_SECRET_LENGTH = 32

CommaSeparated = Annotated[list[str], NoDecode]
{%- if cookiecutter.use_celery == "yes" %}
BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "sqla+sqlite://")
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
{%- endif %}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"
    secret_key: SecretStr = SecretStr(DEVELOPMENT_SECRET)
{% if cookiecutter.database != "none" %}
    database_url: str = "sqlite+aiosqlite:///./var/app.db"
    # PostgreSQL schema to work in (search_path); the server's default when unset.
    database_schema: str | None = None
    # Connections to the database for the whole service; each worker gets an equal share.
    db_max_connections: int = Field(default=PROFILE.db_max_connections, ge=1)
    # Set by gunicorn.conf.py for its workers, so each knows its share of the budget.
    service_workers: int = Field(default=1, ge=1)
    # Seconds a query may take on PostgreSQL (statement_timeout) before the request gets a 503.
    db_statement_timeout: float = Field(default=PROFILE.db_statement_timeout, gt=0)
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
    # The model file `make model` writes; its metadata is beside it, with a .json suffix.
    model_path: Path = Path("models/model.joblib")
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
    # Redis relays room messages between workers and machines: redis://host:6379/0. Unset:
    # messages fan out inside one process, so gunicorn.conf.py starts a single worker.
    redis_url: str | None = None
    # Origins a browser may open /ws/ from, comma-separated; unset: any. Clients that send no
    # Origin header (not browsers) are always let in.
    ws_allowed_origins: CommaSeparated = []
    ws_heartbeat_interval: float = Field(default=PROFILE.websocket.heartbeat_interval, gt=0)
    ws_idle_timeout: float = Field(default=PROFILE.websocket.idle_timeout, gt=0)
    ws_max_message_size: int = Field(default=PROFILE.websocket.max_message_size, ge=1)
    ws_send_queue_size: int = Field(default=PROFILE.websocket.send_queue_size, ge=1)
    ws_resubscribe_grace: float = Field(default=PROFILE.websocket.resubscribe_grace, gt=0)
{%- endif %}
    # Seconds /health/ready waits for each dependency before calling it unavailable.
    readiness_timeout: float = Field(default=1.0, gt=0)

    # None: on in development, off in production.
    docs_enabled: bool | None = None
    # Host names the service answers to; any in development, to be named in production.
    allowed_hosts: CommaSeparated = Field(default=["*"], min_length=1)
    cors_origins: CommaSeparated = []
    # Request bodies larger than this get a 413 before they are read.
    max_body_size: int = Field(default=1024 * 1024, ge=0)
    # Seconds for a request's complete head (else 408), and for a body to make progress.
    header_timeout: float = Field(default=PROFILE.header_timeout, gt=0)
    body_timeout: float = Field(default=PROFILE.body_timeout, gt=0)
    # Requests one worker answers at once; past it a fast 503 (health checks excepted).
    max_concurrent_requests: int = Field(default=PROFILE.max_concurrent_requests, ge=1)

{%- if cookiecutter.use_celery == "yes" %}
    # Celery's broker: redis://... or amqp://... in production. The default keeps queued
    # jobs in a SQLite file: fine on a laptop, not durable (a killed worker loses its job).
    celery_broker_url: str = "sqla+sqlite:///./var/celery-broker.db"
    # Worker processes per Celery worker; default: the profile's processes per usable CPU.
    celery_concurrency: int | None = Field(default=None, ge=1)
    celery_soft_time_limit: int = Field(default=PROFILE.celery.soft_time_limit, ge=1)
    celery_time_limit: int = Field(default=PROFILE.celery.time_limit, ge=1)
    celery_visibility_timeout: int = Field(default=PROFILE.celery.visibility_timeout, ge=1)
    # Seconds before a queued or running job whose message or worker was lost is queued again.
    job_stale_after: int = Field(default=PROFILE.celery.stale_after, ge=1)
    # Seconds POST /jobs waits for the broker before it answers 503.
    job_publish_timeout: float = Field(default=PROFILE.celery.publish_timeout, gt=0)
    # The largest CSV upload POST /jobs accepts, in bytes.
    max_upload_size: int = Field(default=PROFILE.celery.max_upload_size, ge=1)
{%- endif %}

    # Read by gunicorn.conf.py; validated here so a typo stops the start with one line.
    web_concurrency: int | None = Field(default=None, ge=1)
    # Load the app in the Gunicorn master before forking the workers.
    preload: bool = PROFILE.preload
    port: int = Field(default=8000, ge=1, le=65535)
    # The listener that alone serves /metrics: keep it where the scraper reaches it and
    # clients do not (the Kubernetes NetworkPolicy opens it to the monitoring namespace).
    metrics_port: int = Field(default=9464, ge=1, le=65535)
    bind: str | None = None
    forwarded_allow_ips: str = PROFILE.forwarded_allow_ips
    # The project's Uvicorn worker, or Gunicorn's own "asgi" worker.
    worker_class: str = f"{__package__}.serving.gunicorn_worker.Worker"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
{%- if cookiecutter.scenario == "websocket" or cookiecutter.use_celery == "yes" %}
    # Every Redis key and channel of this service starts with it, so that services (or two
    # deployments of one) can share a Redis server{% if cookiecutter.use_celery == "yes" %} (Celery's keys too, on a Redis broker: jobs
    # queued under one prefix are not seen under another, so drain the queue before changing it){% endif %}.
    redis_key_prefix: str = f"{__package__}:"
{%- endif %}

    @field_validator({% if cookiecutter.use_celery == "yes" %}"celery_concurrency", {% endif %}{% if cookiecutter.scenario == "websocket" %}"redis_url", {% endif %}"web_concurrency", "bind", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allowed_hosts", "cors_origins"{% if cookiecutter.scenario == "websocket" %}, "ws_allowed_origins"{% endif %}, mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
{% if cookiecutter.database != "none" %}
    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with postgresql+asyncpg:// or sqlite+aiosqlite:// "
                "(the service talks to its database asynchronously)"
            )
        return url
{% endif %}
{%- if cookiecutter.use_celery == "yes" %}
    @field_validator("celery_broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(BROKER_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(BROKER_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _time_limits_nest(self) -> Self:
        if not self.celery_soft_time_limit < self.celery_time_limit:
            raise ValueError("CELERY_SOFT_TIME_LIMIT must be below CELERY_TIME_LIMIT")
        if not self.celery_time_limit < self.celery_visibility_timeout:
            raise ValueError(
                "CELERY_VISIBILITY_TIMEOUT must exceed CELERY_TIME_LIMIT, "
                "or a job still running would be handed to a second worker"
            )
        if not self.celery_time_limit < self.job_stale_after:
            raise ValueError(
                "JOB_STALE_AFTER must exceed CELERY_TIME_LIMIT, "
                "or a job still running would be queued again"
            )
        return self
{% endif %}
{%- if cookiecutter.scenario == "websocket" %}
    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _idle_outlasts_heartbeat(self) -> Self:
        if not self.ws_heartbeat_interval < self.ws_idle_timeout:
            raise ValueError(
                "WS_IDLE_TIMEOUT must exceed WS_HEARTBEAT_INTERVAL, or a client would be "
                "dropped before it was even asked for a pong"
            )
        return self
{% endif %}
    @model_validator(mode="after")
    def _metrics_on_a_port_of_their_own(self) -> Self:
        if self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT: metrics have a port of their own")
        return self

    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Self:
        if self.environment != "production":
            return self
        secret = self.secret_key.get_secret_value()
        if secret == DEVELOPMENT_SECRET or len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"SECRET_KEY must be set to a secret of your own in production, at least "
                f"{MIN_SECRET_LENGTH} characters"
            )
        if "*" in self.allowed_hosts:
            raise ValueError(
                "ALLOWED_HOSTS must name the host names this service answers to in production "
                "(not *): URLs it builds, such as a redirect, take the request's Host header"
            )
        return self
{% if cookiecutter.database != "none" %}
    @property
    def connections_per_worker(self) -> int:
        return self.db_max_connections // self.service_workers
{% endif %}
    @property
    def show_docs(self) -> bool:
        if self.docs_enabled is None:
            return self.environment == "development"
        return self.docs_enabled


@lru_cache
def get_settings() -> Settings:
    """The settings, or exit with one readable line saying what is wrong with them."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            ".".join(map(str, e["loc"])).upper()
            + ": " * bool(e["loc"])
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise SystemExit(f"invalid configuration: {problems}") from None
