"""The database: one async engine per worker process, created in the lifespan after fork."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from fastapi import Depends, FastAPI, Request, Response
from sqlalchemy import (
    DateTime,
    Dialect,
    Engine,
    Executable,
    MetaData,
    Result,
    Row,
    TypeDecorator,
    event,
    make_url,
    text,
)
from sqlalchemy import exc as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

from .errors import Throttled, described, unavailable
from .features import Feature, ReadinessChecks
from .settings import Settings

# Seconds asyncpg waits beyond statement_timeout before it gives up on the server itself
# (one that stopped answering cannot cancel anything).
CLIENT_TIMEOUT_MARGIN = 2

logger = logging.getLogger(__name__)
# Each request the database fails gets a 503: the log says why, a line now and then.
answered_unavailable = Throttled(logger)


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
    connection is closed when it is given back, and no statement is cut short (a migration
    or a job may rightly run long; Celery's time limits bound a job).

    No `pool_pre_ping`: it costs a round trip on every checkout. A connection the driver
    already knows closed (the server restarted, or closed it) is replaced at checkout for
    free (`_replace_if_closed`); one that dies unnoticed fails its query, which invalidates
    it and every connection pooled before it, and a read is then repeated once on a fresh
    one (`Reads`).
    """
    options: dict[str, Any] = {}
    if not pooled:
        options["poolclass"] = NullPool
    if settings.database_url.startswith("postgresql"):
        server_settings = {"application_name": __name__.partition(".")[0]}
        if settings.database_schema:
            server_settings["search_path"] = settings.database_schema
        options["connect_args"] = connect_args = {
            "timeout": 5,
            "server_settings": server_settings,
        }
        if not settings.db_statement_cache:
            # Neither asyncpg nor SQLAlchemy's adapter keeps a statement: each one is
            # unnamed and parsed again in the round trip that runs it, so nothing prepared
            # outlives a transaction (PgBouncer's transaction pooling mode).
            connect_args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        if pooled:
            # Every query of a request has a deadline: PostgreSQL cancels it (a 503), and
            # asyncpg gives up a little later should the server not answer at all.
            deadline = settings.db_statement_timeout
            server_settings["statement_timeout"] = str(max(1, round(deadline * 1000)))  # ms
            connect_args["command_timeout"] = deadline + CLIENT_TIMEOUT_MARGIN
            # The worker's share of DB_MAX_CONNECTIONS, and never more.
            options |= {
                "pool_size": settings.connections_per_worker,
                "max_overflow": 0,
                "pool_timeout": 5,
                # Outside a transaction unless asked (sessions are: `_running`), so a read
                # is its statement alone, with nothing to set or reset on each checkout.
                "isolation_level": "AUTOCOMMIT",
            }
        engine = create_async_engine(settings.database_url, **options)
        event.listen(engine.sync_engine, "checkout", _replace_if_closed)
        return engine
    database_file = make_url(settings.database_url).database
    if database_file and database_file != ":memory:":
        Path(database_file).parent.mkdir(parents=True, exist_ok=True)
    # SQLite: several worker processes share one file. Wait for the write lock rather
    # than fail with "database is locked", and let readers work alongside the writer.
    engine = create_async_engine(settings.database_url, connect_args={"timeout": 15}, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _replace_if_closed(
    dbapi_connection: Any, _record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """A pooled asyncpg connection whose server hung up (a restart, a crash, an idle
    timeout) is known closed without a round trip: the pool opens another instead."""
    if dbapi_connection.driver_connection.is_closed():
        raise sa.DisconnectionError("the server closed this pooled connection")


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
    """Readiness: the database answers, or the pool's every connection is in use.

    A pool that is all checked out is busy, not down: each of its connections is in a query
    that has a deadline, so it comes back soon, and were the database gone, those queries
    would fail, their connections come back, and the next ping fail. Waiting here for a
    connection instead would take a busy but healthy instance out of its load balancer.
    """
    if pool_is_busy(engine):
        return
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def pool_is_busy(engine: AsyncEngine) -> bool:
    """Every connection of the pool is checked out: one more would have to wait."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return False
    return pool.checkedin() == 0 and pool.checkedout() >= pool.size()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    session = sessions()
    try:
        yield session
    finally:
        await _close(session)


async def _close(session: AsyncSession) -> None:
    """Give the session's connection back, and never fail doing so.

    FastAPI closes the session after the answer was sent, or, when the route raised, before
    that error is answered. Raising here could then only drop the client's keep-alive
    connection after its answer, or stand in for the route's own error: a rollback on a
    connection the database dropped fails exactly so.
    """
    try:
        await asyncio.shield(session.close())
    except Exception as error:  # logged, never raised: see above
        if is_unavailable(error):
            logger.warning("closing a database session failed: %r", error)
        else:
            logger.exception("closing a database session failed")


SessionDep = Annotated[AsyncSession, Depends(get_session)]

T = TypeVar("T")


class Reads:
    """Reads that need no transaction, at close to the driver's speed.

    Each read takes a pooled connection for one statement in `AUTOCOMMIT`, so PostgreSQL
    sees that statement alone (no `BEGIN`, no `ROLLBACK` when the connection goes back),
    and the connection's cached prepared statement makes it one round trip. Several
    statements that must see the same snapshot belong in a session's transaction instead.

    A read that fails because its pooled connection had died (PostgreSQL restarted, a
    failover, a link cut while idle) is repeated once on a fresh connection: it changed
    nothing, and the pool could replace that connection. A database that is really away
    fails the second try too, and the request gets its 503.
    """

    def __init__(self, engine: Engine, connections: int) -> None:
        # An engine whose connections are in AUTOCOMMIT.
        self._engine = engine
        # First come, first served: the pool's own queue lets a newcomer take a connection
        # given back before a read that has been waiting for one wakes up, and under load
        # some reads waited seconds while most took milliseconds.
        self._turns = asyncio.Semaphore(connections)

    async def first(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        async with self._turns:
            return await greenlet_spawn(self._read, Result.first, statement, parameters)

    async def all(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        async with self._turns:
            return await greenlet_spawn(self._read, Result.all, statement, parameters)

    async def scalar(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        async with self._turns:
            return await greenlet_spawn(self._read, Result.scalar, statement, parameters)

    def _read(
        self,
        take: Callable[[Result[Any]], T],
        statement: Executable,
        parameters: Mapping[str, Any] | None,
    ) -> T:
        # Runs in one of SQLAlchemy's greenlets from checkout to return, where an
        # AsyncConnection takes three (connect, execute, close): measurably faster.
        try:
            with self._engine.connect() as connection:
                return take(connection.execute(statement, parameters))
        except sa.DBAPIError as error:
            if not error.connection_invalidated:
                raise
            logger.info("a pooled database connection had died; reading again on a new one")
        with self._engine.connect() as connection:
            return take(connection.execute(statement, parameters))


async def get_reads(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


ReadsDep = Annotated[Reads, Depends(get_reads)]


# The exceptions a database failure surfaces as, from SQLAlchemy or from the driver beneath
# it. Not all of them mean "unavailable": `is_unavailable` decides.
DATABASE_ERRORS = (OSError, TimeoutError, sa.DBAPIError, sa.TimeoutError)

# SQLSTATE classes of a database that cannot serve now, whatever the request: connection
# exceptions (08), insufficient resources such as too many connections (53), and operator
# intervention (57): shutting down, starting up, in recovery, a statement cancelled at its
# deadline (statement_timeout).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database could not serve, rather than that the request or
    the code was wrong: a retry a moment later may succeed.

    A lost or refused connection, a database shutting down, starting up or recovering, a
    connection left unusable, and a query past its deadline are; an integrity or
    programming error is not. SQLAlchemy wraps the driver's error (`orig`), which wraps
    asyncpg's own (`__cause__`): the whole chain is read.
    """
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (sa.IntegrityError, sa.ProgrammingError, sa.DataError)):
        return False
    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        orig = cause.orig if isinstance(cause, sa.DBAPIError) else None
        cause = orig if isinstance(orig, BaseException) else cause.__cause__
    for each in causes:
        sqlstate = getattr(each, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATE_CLASSES):
            return True
        if isinstance(each, (OSError, TimeoutError, sa.TimeoutError)):
            return True
        # asyncpg's own protocol state refused the next step ("cannot switch to state"):
        # the connection is no longer usable.
        if isinstance(each, asyncpg.InternalClientError):
            return True
    # The DB-API's words for a failure of the database or of the link to it (SQLite's
    # "database is locked" too).
    return isinstance(error, (sa.OperationalError, sa.InterfaceError))


async def database_unavailable(_request: Request, error: Exception) -> Response:
    """503 with Retry-After, not a 500, when the request was fine and the database was not
    there; any other database error goes on to be the 500 (or whatever) it was."""
    if not is_unavailable(error):
        raise error
    answered_unavailable.warning("the database is unavailable (503): %s", described(error))
    return unavailable("the database is unavailable; try again shortly")


def _install(app: FastAPI, _settings: Settings) -> None:
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_unavailable)


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[ReadinessChecks]:
    # Created here, after Gunicorn forked this worker: connections never cross processes.
    engine = create_engine(app.state.settings)
    if engine.dialect.name == "postgresql":
        # The pool's connections are in AUTOCOMMIT (create_engine); a session's transaction
        # names its level, PostgreSQL's default.
        reads = engine.sync_engine
        writes = engine.execution_options(isolation_level="READ COMMITTED")
    else:
        reads = engine.sync_engine.execution_options(isolation_level="AUTOCOMMIT")
        writes = engine
    app.state.engine = engine
    app.state.sessions = async_sessionmaker(writes, expire_on_commit=False)
    app.state.reads = Reads(reads, app.state.settings.connections_per_worker)
    # Imported here: the schema's check reads the database through this module.
    from .schema_state import migrations_check

    try:
        checks = await migrations_check(engine, app.state.settings.readiness_timeout)
        yield {"database": partial(ping, engine), **checks}
    finally:
        await engine.dispose()


DATABASE = Feature(_install, _running)
