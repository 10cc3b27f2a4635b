"""Tests run against {% if cookiecutter.database != "none" %}a database of their own.

With DATABASE_URL set to PostgreSQL they work in a fresh schema that is dropped at the
end, so they never touch the data of the database the URL names; otherwise they use a
SQLite file in a temporary directory. Either way the schema is built by the migrations.
{%- elif cookiecutter.scenario == "ml_inference" %}a model of their own, trained into a temporary directory, so they
never depend on (or touch) the one `make model` wrote.
{%- else %}the app in this process: rooms fan out in-process, or through
Redis in the tests that ask for it (REDIS_URL).
{%- endif %}
"""
{% if cookiecutter.database != "none" %}
import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
{%- else %}
from collections.abc import AsyncIterator
{%- endif %}
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
{%- if cookiecutter.database != "none" %}
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
{%- endif %}

{% if cookiecutter.database != "none" -%}
from {{ cookiecutter.project_slug }}.db import Base
{% endif -%}
{% if cookiecutter.scenario == "ml_inference" -%}
from {{ cookiecutter.project_slug }}.inference import train
{% endif -%}
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings

PROJECT_ROOT = Path(__file__).parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
{%- if cookiecutter.database != "none" %}


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """DATABASE_URL and DATABASE_SCHEMA of a migrated, empty test database."""
    url = os.environ.get("DATABASE_URL", "")
    if url and not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        pytest.exit("DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://", 2)
    if url.startswith("postgresql"):
        schema = f"test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_execute(url, f'CREATE SCHEMA "{schema}"'))
        env = {"DATABASE_URL": url, "DATABASE_SCHEMA": schema}
    else:
        env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db')}/test.db"}
    migrate(env, "upgrade", "head")
    yield env
    if "DATABASE_SCHEMA" in env:
        asyncio.run(_execute(url, f'DROP SCHEMA "{env["DATABASE_SCHEMA"]}" CASCADE'))


def migrate(database: dict[str, str], *args: str) -> None:
    """Run Alembic as `make migrate` does, against the test database."""
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src"), **database},
        check=True,
        capture_output=True,
    )


async def _execute(url: str, statement: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text(statement))
    await engine.dispose()
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model `make model` trains, written to a directory of the tests' own."""
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    train.save(*train.train(), path)
    return path
{%- endif %}


@pytest.fixture
{%- if cookiecutter.database != "none" %}
def settings(database: dict[str, str]{% if cookiecutter.use_celery == "yes" %}, tmp_path: Path{% endif %}) -> Settings:
{%- elif cookiecutter.scenario == "ml_inference" %}
def settings(model_path: Path) -> Settings:
{%- else %}
def settings() -> Settings:
{%- endif %}
    # Everything a test relies on is set here, whatever the caller's environment says.
    return Settings(
        _env_file=None,
        environment="development",
        docs_enabled=None,
        allowed_hosts=["*"],
        cors_origins=[],
{%- if cookiecutter.database != "none" %}
        database_url=database["DATABASE_URL"],
        database_schema=database.get("DATABASE_SCHEMA"),
{%- endif %}
{%- if cookiecutter.use_celery == "yes" %}
        # Jobs are queued in a broker of the test's own; no worker takes them here.
        celery_broker_url=f"sqla+sqlite:///{tmp_path}/broker.db",
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
        model_path=model_path,
        preload=True,
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
        # Rooms fan out inside the process; the tests that use Redis say so.
        redis_url=None,
        ws_allowed_origins=[],
{%- endif %}
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
{%- if cookiecutter.database != "none" %}
        async with app.state.sessions() as session:
            for table in reversed(Base.metadata.sorted_tables):
                await session.execute(table.delete())
            await session.commit()
{%- endif %}
