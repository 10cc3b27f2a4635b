from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from ..db import ReadsDep, SessionDep
from ..errors import documented
from . import service
from .schemas import MAX_ID, MAX_PAGE_SIZE, ItemIn, ItemOut, ItemPage

router = APIRouter(prefix="/items", tags=["items"], responses=documented(503))

ItemId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get("")
async def list_items(
    reads: ReadsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> ItemPage:
    items, total = await service.list_items(reads, limit, offset)
    return ItemPage(
        items=[ItemOut.model_validate(item) for item in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 409, 413))
async def create_item(session: SessionDep, data: ItemIn) -> ItemOut:
    return ItemOut.model_validate(await service.create_item(session, data))


@router.get("/{item_id}", responses=documented(404))
async def get_item(reads: ReadsDep, item_id: ItemId) -> ItemOut:
    return ItemOut.model_validate(await service.read_item(reads, item_id))


@router.put("/{item_id}", responses=documented(400, 404, 409, 413))
async def replace_item(session: SessionDep, item_id: ItemId, data: ItemIn) -> ItemOut:
    return ItemOut.model_validate(await service.replace_item(session, item_id, data))


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404))
async def delete_item(session: SessionDep, item_id: ItemId) -> None:
    await service.delete_item(session, item_id)
