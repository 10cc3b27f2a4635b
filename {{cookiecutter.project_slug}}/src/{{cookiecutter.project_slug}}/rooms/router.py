"""WS /ws/{room} and POST /rooms/{room}/messages."""

import asyncio
import logging
import os
from typing import Annotated

from fastapi import APIRouter, Depends, Request, WebSocket, status
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from ..errors import Unavailable, documented
from ..settings import Settings
from .fanout import Client, Fanout, Rooms, RoomsUnavailable
from .schemas import HTTP_SENDER, Hello, Message, MessageIn, Problem, RoomName

logger = logging.getLogger(__name__)

router = APIRouter(tags=["rooms"])

# Close codes (RFC 6455).
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
# Sent with a 503, or to a client whose message was refused: the message may have reached
# some clients of the room, not all of them (rooms/fanout.py says when).
UNAVAILABLE = (
    "the rooms are unavailable, so the message may not reach every client; try again shortly"
)
# How a receive or send ends when the client has gone: not an error of the app.
CLIENT_GONE = (WebSocketDisconnect, WebSocketDisconnected)


def get_fanout(request: Request) -> Fanout:
    fanout: Fanout = request.app.state.fanout
    return fanout


FanoutDep = Annotated[Fanout, Depends(get_fanout)]


@router.post(
    "/rooms/{room}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_description=(
        "Accepted: handed to every worker whose clients are in the room. Delivery is at most "
        "once: a client that disconnects, or falls too far behind, misses it; nothing is "
        "stored or sent again."
    ),
    responses=documented(400, 413)
    | {
        503: documented(503)[503]
        | {
            "description": "Redis is away, or the workers are subscribing to it again: the "
            "message may not reach every client (it may have reached some). Retry after "
            "Retry-After seconds."
        }
    },
)
async def publish(room: RoomName, body: MessageIn, fanout: FanoutDep) -> Message:
    """Send a message to every client in the room, on every worker, at most once."""
    message = Message(room=room, sender=HTTP_SENDER, text=body.text)
    try:
        await fanout.publish(room, message.model_dump_json())
    except RoomsUnavailable:
        raise Unavailable(UNAVAILABLE) from None
    return message


@router.websocket("/ws/{room}")
async def join(websocket: WebSocket, room: RoomName) -> None:
    """Receive every message of the room as JSON; send `{"text": ...}` to publish one."""
    settings: Settings = websocket.app.state.settings
    if not _origin_allowed(websocket.headers.get("origin"), settings.ws_allowed_origins):
        await websocket.close(POLICY_VIOLATION)  # before accepting: the handshake gets 403
        return
    await websocket.accept()
    rooms: Rooms = websocket.app.state.rooms
    client = Client(settings.ws_send_queue_size)
    # Joined before the hello: every message published after the hello reaches the client.
    rooms.join(room, client)
    hello = Hello(room=room, client=client.id, worker=os.getpid())
    try:
        await websocket.send_text(hello.model_dump_json())
        close_code = await _relay(websocket, client, room, websocket.app.state.fanout, settings)
    except WebSocketDisconnect:
        return
    finally:
        rooms.leave(room, client)
    if close_code == TRY_AGAIN_LATER:
        logger.warning(
            "client %s fell %d messages behind in room %s: closing it with 1013",
            client.id,
            settings.ws_send_queue_size,
            room,
        )
    if close_code is not None:
        await _close(websocket, close_code, within=settings.ws_idle_timeout)


async def _relay(
    websocket: WebSocket, client: Client, room: str, fanout: Fanout, settings: Settings
) -> int | None:
    """Relay both ways until the client leaves (None) or must be closed (the close code)."""
    receiving = asyncio.create_task(_receive(websocket, client, room, fanout, settings))
    sending = asyncio.create_task(_send(websocket, client))
    overflowing = asyncio.create_task(client.overflowed.wait())
    tasks = (receiving, sending, overflowing)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in (receiving, sending):
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, CLIENT_GONE):
            raise error
    if client.overflowed.is_set():
        return TRY_AGAIN_LATER
    if receiving.cancelled() or receiving.exception() is not None:
        return None
    return receiving.result()


async def _receive(
    websocket: WebSocket, client: Client, room: str, fanout: Fanout, settings: Settings
) -> int | None:
    """Publish what the client sends, until it leaves (None) or breaks a rule (a close code)."""
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return None
        text = frame.get("text")
        if text is None:
            client.offer(_problem("expected a text frame holding a JSON object with a text"))
            continue
        # The server's WebSocket protocol enforces the limit before a frame is read whole;
        # this holds it on a server that does not.
        if len(text.encode()) > settings.ws_max_message_size:
            return MESSAGE_TOO_BIG
        try:
            body = MessageIn.model_validate_json(text)
        except ValidationError as error:
            client.offer(_problem(f"expected a JSON object with a text: {_first_error(error)}"))
            continue
        message = Message(room=room, sender=client.id, text=body.text)
        try:
            await fanout.publish(room, message.model_dump_json())
        except RoomsUnavailable:
            client.offer(_problem(UNAVAILABLE))


async def _send(websocket: WebSocket, client: Client) -> None:
    while True:
        await websocket.send_text(await client.outbox.get())


async def _close(websocket: WebSocket, code: int, within: float) -> None:
    """Close with `code`. The close frame waits behind what the client has not read yet; a
    client that reads nothing at all is let go after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            await websocket.close(code)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        pass


def _origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """Browsers always send Origin, so a page elsewhere cannot open a socket with its user's
    cookies (cross-site WebSocket hijacking). Other clients send none and are let in."""
    return origin is None or not allowed or origin in allowed


def _problem(detail: str) -> str:
    return Problem(detail=detail).model_dump_json()


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(map(str, first["loc"]))
    return f"{where}: {first['msg']}" if where else first["msg"]
