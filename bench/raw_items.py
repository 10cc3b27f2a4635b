"""GET /items/{id} without the ORM: the same SELECT on a raw asyncpg pool, twice.

`fastapi_app`: the generated service's own middleware, schema and FastAPI, with
SQLAlchemy's session replaced by `pool.fetchrow`: what the ORM layer costs.
`asgi_app`: no framework at all, the ceiling for this query on this server.
Both read DATABASE_URL, DATABASE_SCHEMA and DB_MAX_CONNECTIONS as the service does, and
size the pool as it does: the service's settings give this worker's share of the budget
(gunicorn.conf.py's post_fork tells them how many workers share it).
"""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
from fastapi import FastAPI, HTTPException, Path, Request
from my_service.items.schemas import MAX_ID, ItemOut
from my_service.serving.middleware import RequestObserver
from my_service.settings import get_settings

QUERY = "SELECT id, name, description, price_cents, created_at, updated_at FROM items WHERE id = $1"


async def create_pool() -> asyncpg.Pool:
    size = get_settings().connections_per_worker
    server_settings = {"application_name": "raw_items"}
    if schema := os.environ.get("DATABASE_SCHEMA"):
        server_settings["search_path"] = schema
    return await asyncpg.create_pool(
        os.environ["DATABASE_URL"].replace("postgresql+asyncpg", "postgresql"),
        min_size=1,
        max_size=size,
        server_settings=server_settings,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await create_pool()
    yield
    await app.state.pool.close()


fastapi_app = FastAPI(lifespan=lifespan)
fastapi_app.add_middleware(RequestObserver, max_in_flight=get_settings().max_concurrent_requests)


@fastapi_app.get("/items/{item_id}")
async def get_item(request: Request, item_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> ItemOut:
    row = await request.app.state.pool.fetchrow(QUERY, item_id)
    if row is None:
        raise HTTPException(404, f"item {item_id} does not exist")
    return ItemOut.model_validate(dict(row))


@fastapi_app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}


_pool: asyncpg.Pool | None = None


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _pool
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _pool = await create_pool()
                await send({"type": "lifespan.startup.complete"})
            else:
                if _pool is not None:
                    await _pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert _pool is not None
    _, _, tail = scope["path"].rpartition("/")
    row = await _pool.fetchrow(QUERY, int(tail)) if tail.isdigit() else None
    status, body = (200, json.dumps(dict(row), default=str).encode()) if row else (404, b"{}")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
