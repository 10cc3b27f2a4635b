"""The database: one async engine per worker process, created in the lifespan after fork."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import DateTime, Dialect, MetaData, TypeDecorator, event, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

from .settings import Settings


class Base(DeclarativeBase):
    # Stable constraint names, so migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    """An engine whose pool suits the database in the URL.

    `pooled=False` is for a short run that is not a server (migrations, a job): each
    connection is closed when it is given back.
    """
    options: dict[str, Any] = {"pool_pre_ping": True}
    if not pooled:
        options["poolclass"] = NullPool
    if settings.database_url.startswith("postgresql"):
        server_settings = {"application_name": __name__.partition(".")[0]}
        if settings.database_schema:
            server_settings["search_path"] = settings.database_schema
        options["connect_args"] = {"timeout": 5, "server_settings": server_settings}
        if pooled:
            # The worker's share of DB_MAX_CONNECTIONS, and never more.
            options |= {
                "pool_size": settings.connections_per_worker,
                "max_overflow": 0,
                "pool_timeout": 5,
            }
        return create_async_engine(settings.database_url, **options)
    database_file = make_url(settings.database_url).database
    if database_file and database_file != ":memory:":
        Path(database_file).parent.mkdir(parents=True, exist_ok=True)
    # SQLite: several worker processes share one file. Wait for the write lock rather
    # than fail with "database is locked", and let readers work alongside the writer.
    engine = create_async_engine(settings.database_url, connect_args={"timeout": 15}, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
