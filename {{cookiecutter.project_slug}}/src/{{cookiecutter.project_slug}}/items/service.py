"""Items in the database.

Reads go through `Reads` with Core statements built once: one statement, no transaction,
one round trip on a warm connection; the fast path to copy for a hot read. Writes go
through the ORM, each function one transaction that commits fully or not at all.
"""

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import Row, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from ..db import Reads
from .models import Item
from .schemas import ItemIn

ITEMS = Item.__table__
# Built once, at import: SQLAlchemy then compiles each just once per worker (its cache is
# keyed by the statement's shape), where a statement built per request pays for building
# and for its cache key each time.
BY_ID = select(ITEMS).where(ITEMS.c.id == bindparam("item_id"))
PAGE = select(ITEMS).order_by(ITEMS.c.id).limit(bindparam("limit")).offset(bindparam("offset"))
COUNT = select(func.count()).select_from(ITEMS)


class ItemNotFound(HTTPException):
    def __init__(self, item_id: int) -> None:
        super().__init__(status.HTTP_404_NOT_FOUND, f"item {item_id} does not exist")


class NameTaken(HTTPException):
    def __init__(self, name: str) -> None:
        super().__init__(status.HTTP_409_CONFLICT, f"an item named {name!r} already exists")


async def list_items(reads: Reads, limit: int, offset: int) -> tuple[list[Row[Any]], int]:
    page = await reads.all(PAGE, {"limit": limit, "offset": offset})
    total = await reads.scalar(COUNT)
    return list(page), total or 0


async def read_item(reads: Reads, item_id: int) -> Row[Any]:
    item = await reads.first(BY_ID, {"item_id": item_id})
    if item is None:
        raise ItemNotFound(item_id)
    return item


async def get_item(session: AsyncSession, item_id: int) -> Item:
    """The item as an ORM object, for a change within the session's transaction."""
    item = await session.get(Item, item_id)
    if item is None:
        raise ItemNotFound(item_id)
    return item


async def create_item(session: AsyncSession, data: ItemIn) -> Item:
    item = Item(**data.model_dump())
    session.add(item)
    await _commit(session, item)
    return item


async def replace_item(session: AsyncSession, item_id: int, data: ItemIn) -> Item:
    item = await get_item(session, item_id)
    for field, value in data.model_dump().items():
        setattr(item, field, value)
    await _commit(session, item)
    return item


async def delete_item(session: AsyncSession, item_id: int) -> None:
    item = await get_item(session, item_id)
    await session.delete(item)
    await _commit(session, item)


async def _commit(session: AsyncSession, item: Item) -> None:
    # The database decides: the unique index, so two concurrent requests cannot both take
    # a name; the row count, so an item deleted by a concurrent request is reported gone.
    name, item_id = item.name, item.id  # read now: a rollback expires them
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise NameTaken(name) from None
    except StaleDataError:
        await session.rollback()
        raise ItemNotFound(item_id) from None
