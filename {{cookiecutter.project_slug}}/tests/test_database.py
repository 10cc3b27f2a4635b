"""The database as a dependency: which of its errors mean "unavailable, try again" (a 503)
and which keep their own answer (built as SQLAlchemy raises them from asyncpg), a read
on a connection that died, and readiness when it cannot be reached."""

import sqlite3
import subprocess
import sys
import time

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, event, text
from sqlalchemy import exc as sa
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
)

from {{ cookiecutter.project_slug }}.db import is_unavailable
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.service_settings import ServiceSettings
from {{ cookiecutter.project_slug }}.settings import Settings

from .conftest import refusal
from .test_gunicorn_conf import PROJECT_ROOT, clean_env, run_config

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]


def raised(error: Exception, *, connection_invalidated: bool = False) -> Exception:
    """`error`, from asyncpg, as SQLAlchemy raises it: translated by the dialect, wrapped."""
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(DBAPI, error)
    except DBAPI.Error as translated:
        return sa.DBAPIError.instance(
            "SELECT 1", None, translated, DBAPI.Error, connection_invalidated=connection_invalidated
        )
    raise AssertionError(f"the dialect did not translate {error!r}")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        sa.TimeoutError("QueuePool limit of size 5 overflow 0 reached"),
        raised(asyncpg.CannotConnectNowError("the database system is starting up")),
        raised(asyncpg.CannotConnectNowError("the database system is in recovery mode")),
        raised(asyncpg.AdminShutdownError("terminating connection due to administrator command")),
        raised(asyncpg.CrashShutdownError("terminating connection due to crash of another")),
        raised(asyncpg.ConnectionDoesNotExistError("connection was closed mid-operation")),
        raised(asyncpg.TooManyConnectionsError("sorry, too many clients already")),
        raised(asyncpg.QueryCanceledError("canceling statement due to statement timeout")),
        raised(asyncpg.InternalClientError("cannot switch to state 15")),
        raised(asyncpg.InterfaceError("connection is closed")),
        raised(asyncpg.DivisionByZeroError("division by zero"), connection_invalidated=True),
        sa.OperationalError("SELECT 1", None, sqlite3.OperationalError("database is locked")),
    ],
)
def test_the_database_failing_is_unavailable(error: Exception) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        raised(asyncpg.UniqueViolationError("duplicate key value violates unique constraint")),
        raised(asyncpg.UndefinedTableError('relation "items" does not exist')),
        raised(asyncpg.DivisionByZeroError("division by zero")),
        raised(asyncpg.DataError("invalid input for query argument $1")),
        ValueError("not the database"),
    ],
)
def test_an_error_of_the_request_or_the_code_is_not(error: Exception) -> None:
    assert not is_unavailable(error)


class ConnectionKiller:
    """Closes the pooled connection of the next `times` statements just before they run,
    as a server that went away unnoticed would: the statement itself finds it dead."""

    def __init__(self, app: FastAPI, times: int) -> None:
        self.engine = app.state.engine.sync_engine
        self.left = times
        self.killed = 0

    def __enter__(self) -> "ConnectionKiller":
        event.listen(self.engine, "before_cursor_execute", self.kill)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self.kill)

    def kill(self, connection: Connection, *_: object) -> None:
        if self.left:
            self.left -= 1
            self.killed += 1
            connection.connection.dbapi_connection.close()  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.usefixtures("client")  # the app's lifespan, which opens its pool
async def test_a_read_whose_pooled_connection_died_is_read_once_more_on_a_new_one(
    app: FastAPI,
) -> None:
    reads = app.state.reads
    assert await reads.scalar(text("SELECT 1")) == 1  # a pooled connection, warm

    with ConnectionKiller(app, times=1) as killer:
        value = await reads.scalar(text("SELECT 2"))

    assert killer.killed == 1
    assert value == 2


@pytest.mark.anyio
@pytest.mark.usefixtures("client")
async def test_a_read_whose_new_connection_dies_too_fails_as_unavailable(app: FastAPI) -> None:
    reads = app.state.reads
    assert await reads.scalar(text("SELECT 1")) == 1

    # Once more, not again and again: a database that is really away is answered at once
    # (a 503, by `database_unavailable`).
    with ConnectionKiller(app, times=2) as killer, pytest.raises(sa.DBAPIError) as raised:
        await reads.scalar(text("SELECT 2"))

    assert killer.killed == 2
    assert is_unavailable(raised.value)


@pytest.mark.anyio
async def test_unreachable_database_makes_ready_503_naming_it_but_live_stays_200(
    settings: Settings,
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    unreachable = {"database_url": "postgresql+asyncpg://app@127.0.0.1:1/app"}
    app: FastAPI = create_app(settings.model_copy(update=unreachable))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            started = time.monotonic()
            ready = await client.get("/health/ready")
            elapsed = time.monotonic() - started
            live = await client.get("/health/live")

    assert ready.status_code == 503
    assert list(ready.json()["failed"]) == ["database"]
    assert elapsed < 5, "readiness must answer fast, never hang"
    assert live.status_code == 200


def test_a_sync_database_url_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = refusal(monkeypatch, DATABASE_URL="postgresql://localhost/app")

    assert "DATABASE_URL" in refused
    assert "postgresql+asyncpg://" in refused


def test_each_worker_takes_an_equal_share_of_the_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(_env_file=None, db_max_connections=20)
    # The share is a fact of the process: put it back after the test.
    monkeypatch.setattr(ServiceSettings, "workers_in_service", ServiceSettings.workers_in_service)

    settings.share_among(3)

    assert settings.connections_per_worker == 6


def test_an_empty_database_url_is_refused_not_replaced_by_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The systemd unit's env file ships DATABASE_URL= until the operator names a database.
    refused = refusal(monkeypatch, DATABASE_URL="")

    assert refused.startswith("invalid configuration: DATABASE_URL: must start with")


def test_fewer_connections_than_workers_is_refused_in_one_line() -> None:
    result = run_config(WEB_CONCURRENCY="4", DB_MAX_CONNECTIONS="3")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: DB_MAX_CONNECTIONS (3) is below the number of workers (4): "
        "each worker needs at least one connection"
    ]


def test_more_workers_than_connections_asked_of_gunicorn_itself_are_refused() -> None:
    # GUNICORN_CMD_ARGS is read by Gunicorn after gunicorn.conf.py: the count is checked as
    # Gunicorn starts, before it binds or forks.
    start = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    environment = clean_env(GUNICORN_CMD_ARGS="--workers 4", DB_MAX_CONNECTIONS="3")

    result = subprocess.run(
        start, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "invalid configuration: DB_MAX_CONNECTIONS (3) is below the number of workers (4): "
        "each worker needs at least one connection"
    )
