from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..bodies import ClientBody
from .models import DESCRIPTION_MAX_LENGTH, NAME_MAX_LENGTH

# Identifiers and offsets must fit the database's 32-bit integers.
MAX_ID = 2**31 - 1
MAX_PAGE_SIZE = 100
# PostgreSQL cannot store NUL characters in text: the schema says so, and a client that
# sends one gets a 422 instead of a 500. (Lone surrogates are refused as invalid JSON text.)
STORABLE_TEXT = r"^[^\x00]*$"


def _whole_number(value: object) -> object:
    """JSON Schema counts 207.0 as an integer; so does this service."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=STORABLE_TEXT, examples=["Widget"]),
]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX_LENGTH, pattern=STORABLE_TEXT)]
Cents = Annotated[int, Field(ge=0, le=MAX_ID, examples=[1999]), BeforeValidator(_whole_number)]


class ItemIn(ClientBody):
    """What a client sends to create or replace an item.

    Strict: `true` is not a price and `"12"` is not a number, as in the JSON Schema.
    """

    model_config = ConfigDict(strict=True)

    name: Name
    description: Description | None = None
    price_cents: Cents


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
