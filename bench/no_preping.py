"""The generated service with one change: its pool does not ping a connection each time it
is taken (`pool_pre_ping=False`), to show what that ping costs on GET /items/{id}."""

from typing import Any

from my_service import db, main
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def _without_ping(url: str, **options: Any) -> AsyncEngine:
    return create_async_engine(url, **{**options, "pool_pre_ping": False})


db.create_async_engine = _without_ping
app = main.create_app()
