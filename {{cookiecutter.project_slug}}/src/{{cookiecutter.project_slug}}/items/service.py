"""Items in the database. Each function is one transaction: it commits fully or not at all."""

from fastapi import HTTPException, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from .models import Item
from .schemas import ItemIn


class ItemNotFound(HTTPException):
    def __init__(self, item_id: int) -> None:
        super().__init__(status.HTTP_404_NOT_FOUND, f"item {item_id} does not exist")


class NameTaken(HTTPException):
    def __init__(self, name: str) -> None:
        super().__init__(status.HTTP_409_CONFLICT, f"an item named {name!r} already exists")


async def list_items(session: AsyncSession, limit: int, offset: int) -> tuple[list[Item], int]:
    page = await session.scalars(select(Item).order_by(Item.id).limit(limit).offset(offset))
    total = await session.scalar(select(func.count()).select_from(Item))
    return list(page), total or 0


async def get_item(session: AsyncSession, item_id: int) -> Item:
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
