"""The generated service with GET /items/{id} read as it was before its fast path: the ORM's
`session.get` in a session of its own, on a pool that pings each connection it hands out
(`pool_pre_ping`) and whose connections are in a transaction for every statement (BEGIN,
SELECT, ROLLBACK). Section (f)'s "before"."""

from typing import Any

from my_service import db, main
from my_service.items import router, service
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine


def _as_before(url: str, **options: Any) -> AsyncEngine:
    options.pop("isolation_level", None)
    return create_async_engine(url, **options, pool_pre_ping=True)


async def _read_with_the_orm(_reads: db.Reads, item_id: int) -> Any:
    async with AsyncSession(app.state.engine, expire_on_commit=False) as session:
        return await service.get_item(session, item_id)


db.create_async_engine = _as_before  # type: ignore[assignment]
router.service.read_item = _read_with_the_orm  # type: ignore[assignment]
app = main.create_app()
