from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .models import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH

# Identifiers and offsets must fit the database's 32-bit integers.
MAX_ID = 2**31 - 1
MAX_PAGE_SIZE = 100


def _storable(text: str) -> str:
    """Databases refuse NUL characters and lone surrogates: say so now, not with a 500 later."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return text


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH, examples=["Widget"]),
    AfterValidator(_storable),
]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(_storable)]


class ItemIn(BaseModel):
    """What a client sends to create or replace an item."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Description | None = None
    price_cents: int = Field(ge=0, le=MAX_ID, examples=[1999])


class ItemOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    description: str | None
    price_cents: int
    created_at: datetime
    updated_at: datetime


class ItemPage(BaseModel):
    items: list[ItemOut]
    total: int
    limit: int
    offset: int
