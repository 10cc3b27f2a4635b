"""Alembic runs migrations through the service's own async engine and settings."""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from {{ cookiecutter.project_slug }}.db import Base, create_engine
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
    engine = create_engine(get_settings(), pooled=False)
    async with engine.connect() as connection:
        await connection.run_sync(run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=get_settings().database_url, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_online())
