"""What travels: the messages of a room, and what a connection is told besides."""

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..bodies import ClientBody

# Letters, digits, dot, dash and underscore: safe in a URL, a log line and a Redis channel.
RoomName = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", examples=["lobby"])
]
# The sender of a message published over HTTP; a WebSocket client's is its id.
HTTP_SENDER = "http"


def _encodable(text: str) -> str:
    """JSON's escapes can spell a lone surrogate (`"\\ud800"`), which is a str to Python but
    no Unicode text: it could be neither sent to a client nor written as JSON."""
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(
            f"is not valid Unicode: a lone surrogate at character {error.start}"
        ) from None
    return text


class MessageIn(ClientBody):
    """A message to a room, as a client sends it (a WebSocket text frame, or an HTTP body)."""

    model_config = ConfigDict(strict=True)

    text: Annotated[str, AfterValidator(_encodable)]


class Message(BaseModel):
    """A message of a room, as every client in the room receives it."""

    type: Literal["message"] = "message"
    room: str
    # The id of the client that sent it (from its hello), or "http".
    sender: str
    text: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Hello(BaseModel):
    """The first message on every connection: who the client is and which worker holds it."""

    type: Literal["hello"] = "hello"
    room: str
    client: str
    worker: int


class Problem(BaseModel):
    """Something the client sent was not relayed: it was malformed, or the rooms could not
    promise it would reach every client (an HTTP publish would get 503). The connection
    stays open; the client may send it again."""

    type: Literal["error"] = "error"
    detail: str
