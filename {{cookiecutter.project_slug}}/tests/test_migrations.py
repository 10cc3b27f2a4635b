"""Readiness follows the migrations: a database they have not reached is not ready, and
says why; one ahead of them (the next release's, during a rolling deploy) stays ready, with
a warning. Each test has a SQLite database of its own, migrated as far as it says."""

import logging
import math
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.project_slug }} import db, schema_state
from {{ cookiecutter.project_slug }}.errors import Throttled
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings

from .fixtures.database import migrate

pytestmark = pytest.mark.anyio

SCRIPTS = schema_state.migrations()
assert SCRIPTS is not None
HEAD = ", ".join(sorted(SCRIPTS.get_heads()))
BEHIND = (
    f"the database is at revision none, the code expects {HEAD}: "
    "apply the migrations (alembic upgrade head)"
)
{%- if cookiecutter.__items %}
# A request that reads a table the migrations create.
NEEDS_A_TABLE = "/items"
{%- else %}
# A request that reads a table the migrations create.
NEEDS_A_TABLE = "/jobs/00000000-0000-0000-0000-000000000000"
{%- endif %}


@pytest.fixture(scope="module")
def at_the_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database the migrations have been applied to, once for every test to copy."""
    database_file = tmp_path_factory.mktemp("migrated") / "service.db"
    migrate({"DATABASE_URL": f"sqlite+aiosqlite:///{database_file}"}, "upgrade", "head")
    return database_file


@pytest.fixture
def database_file(tmp_path: Path) -> Path:
    return tmp_path / "service.db"


@pytest.fixture
def own_settings(settings: Settings, database_file: Path) -> Settings:
    own = {"database_url": f"sqlite+aiosqlite:///{database_file}", "database_schema": None}
    return settings.model_copy(update=own)


def execute(database_file: Path, statement: str, *parameters: str) -> None:
    connection = sqlite3.connect(database_file)
    with connection:
        connection.execute(statement, parameters)
    connection.close()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING
    ]


async def test_a_database_the_migrations_have_not_reached_is_not_ready_and_says_why_once(
    own_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(own_settings) as client:
        answers = [await client.get("/health/ready") for _ in range(3)]
        live = await client.get("/health/live")

    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert answers[-1].json() == {"status": "unavailable", "failed": {"migrations": BEHIND}}
    assert live.status_code == 200
    assert warnings_of(caplog, schema_state.__name__) == [f"not ready: {BEHIND}"]


async def test_readiness_answers_200_as_soon_as_the_database_reaches_the_head(
    own_settings: Settings, database_file: Path, at_the_head: Path
) -> None:
    shutil.copy(at_the_head, database_file)
    execute(database_file, "DELETE FROM alembic_version")

    async with serving(own_settings) as client:
        before = await client.get("/health/ready")
        execute(database_file, "INSERT INTO alembic_version VALUES (?)", HEAD)  # migrated
        after = await client.get("/health/ready")

    assert before.status_code == 503
    assert (after.status_code, after.json()) == (200, {"status": "ready", "failed": {}})


async def test_a_database_ahead_of_the_code_stays_ready_with_a_warning(
    own_settings: Settings,
    database_file: Path,
    at_the_head: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copy(at_the_head, database_file)
    execute(database_file, "UPDATE alembic_version SET version_num = 'f00dfeedbeef'")

    async with serving(own_settings) as client:
        ready = await client.get("/health/ready")

    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "failed": {}})
    assert warnings_of(caplog, schema_state.__name__) == [
        f"the database is at revision f00dfeedbeef, which these migrations do not know "
        f"(they end at {HEAD}): a newer release's; serving"
    ]


async def test_a_database_at_the_head_is_asked_again_only_after_a_minute(
    own_settings: Settings,
    database_file: Path,
    at_the_head: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copy(at_the_head, database_file)

    async with serving(own_settings) as client:
        execute(database_file, "DELETE FROM alembic_version")
        within_the_minute = await client.get("/health/ready")
        monkeypatch.setattr(schema_state, "RECHECK_AFTER", 0.0)  # the minute has passed
        after_it = await client.get("/health/ready")

    assert within_the_minute.status_code == 200
    assert after_it.json() == {"status": "unavailable", "failed": {"migrations": BEHIND}}


async def test_a_503_for_the_database_logs_its_error_at_most_every_ten_seconds(
    own_settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log's pace is the process's: start it afresh, whatever other tests logged.
    monkeypatch.setattr(db, "answered_unavailable", Throttled(db.logger))

    async with serving(own_settings) as client:
        answers = [await client.get(NEEDS_A_TABLE) for _ in range(5)]
        monkeypatch.setattr(db.answered_unavailable, "next_at", -math.inf)  # 10 s later
        last = await client.get(NEEDS_A_TABLE)

    assert {answer.status_code for answer in [*answers, last]} == {503}
    logged = warnings_of(caplog, db.__name__)
    assert len(logged) == 2, logged
    assert logged[0].startswith("the database is unavailable (503): OperationalError: ")
    assert "no such table" in logged[0]
    assert logged[1].endswith("(4 more since the last such line)")
