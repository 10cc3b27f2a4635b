"""Alembic runs migrations through the service's own async engine and settings."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from {{ cookiecutter.project_slug }}.db import Base, create_engine
from {{ cookiecutter.project_slug }}.errors import described
{%- if cookiecutter.__items %}
from {{ cookiecutter.project_slug }}.items import models as _items  # noqa: F401  (registers the table)
{%- endif %}
{%- if cookiecutter.__jobs %}
from {{ cookiecutter.project_slug }}.jobs import models as _jobs  # noqa: F401  (registers the table)
{%- endif %}
from {{ cookiecutter.project_slug }}.settings import get_settings

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: rebuild the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    settings = get_settings()
    engine = create_engine(settings, pooled=False)
    try:
        connection = await engine.connect()
    except (OSError, DBAPIError) as error:
        raise SystemExit(f"cannot reach the database (DATABASE_URL): {described(error)}") from None
    try:
        if settings.database_schema and connection.dialect.name == "postgresql":
            await create_schema(connection, settings.database_schema)
        await connection.run_sync(run_migrations)
    finally:
        await connection.close()
        await engine.dispose()


async def create_schema(connection: AsyncConnection, schema: str) -> None:
    """DATABASE_SCHEMA, created if it is missing: the migrations create their tables in it."""
    exists = text("SELECT 1 FROM pg_namespace WHERE nspname = :schema")
    if not await connection.scalar(exists, {"schema": schema}):
        quoted = connection.dialect.identifier_preparer.quote_schema(schema)
        try:
            await connection.execute(text(f"CREATE SCHEMA {quoted}"))
        except DBAPIError as error:
            raise SystemExit(
                f"cannot create the schema {schema} (DATABASE_SCHEMA): {described(error)}; "
                f"have it created by a user who may (CREATE SCHEMA {quoted}), or name another"
            ) from None
    # End this transaction: the migrations run in one of their own, which Alembic commits
    # (within one begun here, it would leave the commit to us, and nothing would be kept).
    await connection.commit()


if context.is_offline_mode():
    context.configure(url=get_settings().database_url, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_online())
