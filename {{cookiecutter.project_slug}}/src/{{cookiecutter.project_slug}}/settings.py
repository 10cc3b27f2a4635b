"""Run-time settings, read once from the environment (and `.env` when present)."""

from functools import lru_cache
{%- if cookiecutter.scenario == "ml_inference" %}
from pathlib import Path
{%- endif %}
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .profile import PROFILE

# Good enough on a laptop, refused in production.
DEVELOPMENT_SECRET = "development-only-secret-change-me"  # noqa: S105

CommaSeparated = Annotated[list[str], NoDecode]


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
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
    # The model file `make model` writes; its metadata is beside it, with a .json suffix.
    model_path: Path = Path("models/model.joblib")
{%- endif %}
    # Seconds /health/ready waits for each dependency before calling it unavailable.
    readiness_timeout: float = Field(default=1.0, gt=0)

    # None: on in development, off in production.
    docs_enabled: bool | None = None
    allowed_hosts: CommaSeparated = Field(default=["*"], min_length=1)
    cors_origins: CommaSeparated = []
    # Request bodies larger than this get a 413 before they are read.
    max_body_size: int = Field(default=1024 * 1024, ge=0)

    # Read by gunicorn.conf.py; validated here so a typo stops the start with one line.
    web_concurrency: int | None = Field(default=None, ge=1)
    # Load the app in the Gunicorn master before forking the workers.
    preload: bool = PROFILE.preload
    port: int = Field(default=8000, ge=1, le=65535)
    bind: str | None = None
    forwarded_allow_ips: str = PROFILE.forwarded_allow_ips
    # The project's Uvicorn worker, or Gunicorn's own "asgi" worker.
    worker_class: str = f"{__package__}.worker.Worker"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("web_concurrency", "bind", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("allowed_hosts", "cors_origins", mode="before")
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
    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Self:
        if self.environment == "production" and (
            self.secret_key.get_secret_value() == DEVELOPMENT_SECRET
        ):
            raise ValueError("SECRET_KEY must be set to a secret of your own in production")
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
