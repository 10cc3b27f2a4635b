"""The database's settings: where it is, and how much of it the service may use."""

import re

from pydantic import Field, field_validator

from .service_settings import ServiceSettings

# The port of a database URL, as SQLAlchemy finds it (its URL parser is not imported here:
# every start reads the settings, and SQLAlchemy takes long to import).
URL_PORT = re.compile(
    r"[^:]*://"  # scheme
    r"(?:[^:/]*(?::[^@]*)?@)?"  # user and password
    r"(?:\[[^/?]+\]|[^/:?]+)?"  # host
    r"(?::(?P<port>[^/?]*))?"
)


class DatabaseSettings(ServiceSettings):
    database_url: str = "sqlite+aiosqlite:///./var/app.db"
    # PostgreSQL schema to work in (search_path); the server's default when unset.
    database_schema: str | None = None
    # Connections to the database for the whole service; each worker gets an equal share.
    db_max_connections: int = Field(ge=1)
    # Seconds a query may take on PostgreSQL (statement_timeout) before the request gets a 503.
    db_statement_timeout: float = Field(gt=0)
    # PostgreSQL: keep each connection's prepared statements, so a query it ran before costs
    # one round trip. Off behind a PgBouncer in transaction pooling mode, whose server
    # connections change between transactions and do not carry the statements along.
    db_statement_cache: bool

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with postgresql+asyncpg:// or sqlite+aiosqlite:// "
                "(the service talks to its database asynchronously)"
            )
        port = URL_PORT.match(url)
        if port and port["port"] and not port["port"].isdigit():
            raise ValueError(f"{port['port']!r} is not a port number")
        return url

    def check_workers(self, workers: int) -> None:
        if self.db_max_connections < workers:
            raise ValueError(
                f"DB_MAX_CONNECTIONS ({self.db_max_connections}) is below the number of workers "
                f"({workers}): each worker needs at least one connection"
            )

    @property
    def connections_per_worker(self) -> int:
        # At least one: a pool of size 0 would have no limit at all (Gunicorn's TTIN signal
        # may add workers after the start's check).
        return max(1, self.db_max_connections // self.workers_in_service)
