"""Rooms over real WebSockets: the app served by Uvicorn in this process, with the worker's
WebSocket protocol settings, and clients that wait a bounded time for every message."""

import asyncio
import base64
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.rooms import protocol
from {{ cookiecutter.project_slug }}.rooms.fanout import Client, Rooms
from {{ cookiecutter.project_slug }}.settings import Settings

from .gunicorn_server import gunicorn
from .test_gunicorn_conf import resolved_config, run_config

pytestmark = pytest.mark.anyio

# Seconds any single wait in these tests may take before the test fails.
WAIT = 5.0


@dataclass
class Served:
    address: str
    server: uvicorn.Server
    app: FastAPI


@asynccontextmanager
async def uvicorn_serving(settings: Settings) -> AsyncIterator[Served]:
    """The app under Uvicorn on a free loopback port, as a worker serves it."""
    app = create_app(settings)
    config = uvicorn.Config(
        app, http="httptools", log_config=None, lifespan="on", timeout_graceful_shutdown=5
    )
    protocol.configure(config, settings)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    async with asyncio.timeout(WAIT):
        while not server.started:  # noqa: ASYNC110 (Uvicorn's server has no event for it)
            await asyncio.sleep(0.01)
    try:
        yield Served(f"127.0.0.1:{listener.getsockname()[1]}", server, app)
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    async with uvicorn_serving(settings) as served:
        yield served.address


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[str]:
    async with serving(settings) as address:
        yield address


@asynccontextmanager
async def joined(address: str, room: str, **headers: str) -> AsyncIterator[ClientConnection]:
    """A client in the room, past its hello."""
    async with connect(f"ws://{address}/ws/{room}", additional_headers=headers) as websocket:
        hello = await receive(websocket)
        assert hello["type"] == "hello"
        yield websocket


async def receive(websocket: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        message: dict[str, Any] = json.loads(await websocket.recv())
    return message


async def close_code(websocket: ClientConnection) -> int | None:
    """Read until the server closes the connection; the code it closed with."""
    async with asyncio.timeout(WAIT):
        try:
            while True:
                await websocket.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


async def publish(address: str, room: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        return await http.post(f"/rooms/{room}/messages", json={"text": text})


async def test_the_first_message_names_the_room_the_client_and_the_worker(server: str) -> None:
    async with connect(f"ws://{server}/ws/lobby") as websocket:
        hello = await receive(websocket)

    assert hello["type"] == "hello"
    assert hello["room"] == "lobby"
    assert hello["worker"] == os.getpid()
    assert len(hello["client"]) == 16


async def test_a_message_published_over_http_reaches_every_client_of_its_room_only(
    server: str,
) -> None:
    async with (
        joined(server, "lobby") as first,
        joined(server, "lobby") as second,
        joined(server, "kitchen") as elsewhere,
    ):
        published = await publish(server, "lobby", "hello, lobby")
        await publish(server, "kitchen", "hello, kitchen")
        received = [await receive(first), await receive(second)]
        # Each client gets its room's messages in order: the kitchen's first is its own.
        elsewhere_first = await receive(elsewhere)

    assert published.status_code == 202
    assert published.json()["text"] == "hello, lobby"
    for message in received:
        assert message == published.json()
        assert message["sender"] == "http"
    assert elsewhere_first["text"] == "hello, kitchen"


async def test_a_clients_message_reaches_everyone_in_the_room_with_its_id(server: str) -> None:
    async with connect(f"ws://{server}/ws/lobby") as sender, joined(server, "lobby") as other:
        sender_id = (await receive(sender))["client"]
        await sender.send(json.dumps({"text": "hi all"}))
        heard = await receive(other)
        echoed = await receive(sender)

    assert heard["type"] == "message"
    assert heard["sender"] == sender_id
    assert heard["text"] == "hi all"
    assert echoed == heard


@pytest.mark.parametrize(
    "frame", ['{"text": 5}', "not json", '{"txt": "x"}', b'{"text": "binary"}']
)
async def test_a_malformed_message_gets_an_error_and_the_connection_stays(
    server: str, frame: str | bytes
) -> None:
    async with joined(server, "lobby") as websocket:
        await websocket.send(frame)
        problem = await receive(websocket)
        await websocket.send(json.dumps({"text": "still here"}))
        after = await receive(websocket)

    assert problem["type"] == "error"
    assert after["text"] == "still here"


async def test_a_message_over_the_size_limit_closes_with_1009(
    server: str, settings: Settings
) -> None:
    async with joined(server, "lobby") as websocket:
        await websocket.send(json.dumps({"text": "x" * settings.ws_max_message_size}))
        code = await close_code(websocket)

    assert code == 1009


async def test_an_http_body_over_the_size_limit_is_413(server: str, settings: Settings) -> None:
    answer = await publish(server, "lobby", "x" * settings.ws_max_message_size)

    assert answer.status_code == 413


async def test_a_lone_surrogate_in_an_http_body_is_422(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as http:
        answer = await http.post(
            "/rooms/lobby/messages",
            content='{"text": "a\\ud800"}',
            headers={"content-type": "application/json"},
        )

    assert answer.status_code == 422
    assert "lone surrogate at character 1" in answer.json()["detail"][0]["msg"]


async def test_a_text_frame_that_is_not_utf8_closes_with_1007_and_logs_no_error(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with joined(server, "lobby") as websocket:
        await websocket.send(b'{"text": "\xc3("}', text=True)
        code = await close_code(websocket)

    assert code == 1007
    assert [r.levelname for r in caplog.records if "not UTF-8" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("room", ["a" * 65, "bad room", "caf\u00e9", "a*"])
async def test_a_bad_room_name_is_refused(server: str, room: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{server}/ws/{quote(room)}"):
            pass
    answer = await publish(server, room, "hello")

    assert refused.value.response.status_code == 403
    assert answer.status_code == 422


async def test_only_allowed_origins_may_open_a_socket(settings: Settings) -> None:
    allowed = settings.model_copy(update={"ws_allowed_origins": ["https://app.example"]})
    async with serving(allowed) as address:
        with pytest.raises(InvalidStatus) as refused:
            async with joined(address, "lobby", origin="https://evil.example"):
                pass
        async with joined(address, "lobby", origin="https://app.example"):
            pass
        async with joined(address, "lobby"):  # no Origin: not a browser
            pass

    assert refused.value.response.status_code == 403


async def test_a_client_that_falls_behind_its_queue_is_marked_and_gets_no_more() -> None:
    rooms = Rooms()
    slow, other = Client(queue_size=2), Client(queue_size=2)
    rooms.join("lobby", slow)
    rooms.join("lobby", other)

    for n in range(3):
        rooms.deliver("lobby", f"m{n}")
        if n == 1:
            other.outbox.get_nowait()
            other.outbox.get_nowait()

    assert slow.overflowed.is_set()
    assert slow.outbox.qsize() == 2
    assert not other.overflowed.is_set()
    assert other.outbox.get_nowait() == "m2"


def drop_pongs(websocket: ClientConnection) -> None:
    """Make the client deaf to pings: it keeps reading, but its pongs never leave."""
    send_frame = websocket.protocol.send_frame

    def send_all_but_pongs(frame: Frame) -> None:
        if frame.opcode is not Opcode.PONG:
            send_frame(frame)

    websocket.protocol.send_frame = send_all_but_pongs  # type: ignore[method-assign]


async def test_a_client_that_stops_answering_pings_is_closed(settings: Settings) -> None:
    quick = settings.model_copy(update={"ws_heartbeat_interval": 0.2, "ws_idle_timeout": 0.6})
    async with (
        serving(quick) as address,
        joined(address, "lobby") as silent,
        joined(address, "lobby") as lively,
    ):
        drop_pongs(silent)
        await asyncio.sleep(1.5)
        still_open = await publish(address, "lobby", "are you there?")
        heard = await receive(lively)
        code = await close_code(silent)

    assert still_open.status_code == 202
    assert heard["text"] == "are you there?"
    assert code == 1011


async def test_a_client_that_reads_nothing_is_let_go_after_the_idle_timeout(
    settings: Settings,
) -> None:
    # A queue longer than the backlog: the app never drops this client itself.
    quick = settings.model_copy(
        update={"ws_heartbeat_interval": 0.2, "ws_idle_timeout": 0.6, "ws_send_queue_size": 1000}
    )
    async with uvicorn_serving(quick) as served:
        deaf = await deaf_client(served.address, "lobby")
        # 7 MB at once: more than the kernel's socket buffers hold (4 MB at most here), so
        # the server's own write buffer stays full.
        for _ in range(120):
            await served.app.state.fanout.publish("lobby", "x" * 60_000)
        async with asyncio.timeout(WAIT):
            while websockets_open(served.server):  # noqa: ASYNC110 (a count, not an event)
                await asyncio.sleep(0.05)
        let_go = not websockets_open(served.server)
        deaf.close()

    assert let_go, "the client that reads nothing still holds its connection"


async def deaf_client(address: str, room: str) -> asyncio.StreamWriter:
    """A WebSocket client that completes its handshake and then reads nothing, ever."""
    host, port = address.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/{room} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode())
    async with asyncio.timeout(WAIT):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return writer


def websockets_open(server: uvicorn.Server) -> int:
    return sum(
        isinstance(connection, protocol.RoomsWebSocketProtocol)
        for connection in server.server_state.connections
    )


async def test_without_redis_unreachable_publishing_is_503_and_clients_stay(
    settings: Settings,
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    away = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with serving(away) as address, joined(address, "lobby") as websocket:
        answer = await publish(address, "lobby", "anyone?")
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            ready = await http.get("/health/ready")
            live = await http.get("/health/live")
        await websocket.send(json.dumps({"text": "anyone?"}))
        problem = await receive(websocket)

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert list(ready.json()["failed"]) == ["redis"]
    assert live.status_code == 200
    assert problem["type"] == "error"
    assert "unavailable" in problem["detail"]


async def test_open_websockets_do_not_count_against_the_requests_a_worker_takes_on(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    """A worker that takes one request at a time, with two WebSockets open, still takes
    the next request on: a WebSocket lives for hours and is never counted in flight."""
    environment = {"MAX_CONCURRENT_REQUESTS": "1", **server_environment}
    with gunicorn(tmp_path, environment, workers=1) as running:
        address = f"127.0.0.1:{running.port}"
        async with joined(address, "lobby"), joined(address, "lobby") as listening:
            published = await publish(address, "lobby", "still taken on")
            heard = await receive(listening)

    assert published.status_code == 202
    assert heard["text"] == "still taken on"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set: the fan-out through Redis is not tested")
    return url


async def test_through_redis_a_message_reaches_the_clients_of_every_worker(
    settings: Settings, redis_url: str
) -> None:
    # Two apps, each with its own clients: two workers, as Gunicorn would run them.
    with_redis = settings.model_copy(update={"redis_url": redis_url})
    room = f"lobby-{uuid.uuid4().hex[:8]}"  # the Redis server may be shared
    async with (
        serving(with_redis) as first_worker,
        serving(with_redis) as second_worker,
        joined(first_worker, room) as on_first,
        joined(second_worker, room) as on_second,
    ):
        published = await publish(first_worker, room, "across workers")
        await on_first.send(json.dumps({"text": "from a client"}))
        heard_on_second = [await receive(on_second), await receive(on_second)]
        heard_on_first = [await receive(on_first), await receive(on_first)]
        async with httpx.AsyncClient(base_url=f"http://{second_worker}") as http:
            ready = await http.get("/health/ready")

    assert published.status_code == 202
    assert [m["text"] for m in heard_on_second] == ["across workers", "from a client"]
    assert heard_on_first == heard_on_second
    assert ready.status_code == 200


async def test_a_publish_on_a_closed_redis_transport_is_503(
    settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def closed_transport(*_args: object) -> int:
        # What uvloop raises writing to a connection Redis has just dropped.
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    with_redis = settings.model_copy(update={"redis_url": redis_url})
    async with uvicorn_serving(with_redis) as served:
        monkeypatch.setattr(served.app.state.fanout.redis, "publish", closed_transport)
        answer = await publish(served.address, "lobby", "anyone?")

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"


async def test_after_redis_returns_a_publish_fewer_workers_hear_is_503_until_the_grace_ends(
    settings: Settings, redis_url: str
) -> None:
    with_redis = settings.model_copy(update={"redis_url": redis_url})
    room = f"lobby-{uuid.uuid4().hex[:8]}"
    async with uvicorn_serving(with_redis) as served:
        fanout = served.app.state.fanout
        before = await publish(served.address, room, "heard by every subscriber")
        heard_by = fanout.subscribers  # this app, and any other on the same Redis and prefix
        # One more subscriber heard the last publish before Redis went away; it is not back.
        fanout.subscribers += 1
        fanout.resubscribing_until = time.monotonic() + 60
        during = await publish(served.address, room, "one subscriber short")
        fanout.resubscribing_until = time.monotonic()  # it is gone for good
        after = await publish(served.address, room, "heard by those left")

    assert before.status_code == 202
    assert during.status_code == 503
    assert after.status_code == 202
    assert fanout.subscribers == heard_by


def test_without_redis_one_worker_serves_every_room_and_says_why() -> None:
    config = resolved_config(WEB_CONCURRENCY="3")

    assert config["workers"] == 1
    assert config["workers_from"] == (
        "1, not 3 (WEB_CONCURRENCY): without REDIS_URL rooms are per worker"
    )


def test_with_redis_every_worker_serves_rooms() -> None:
    config = resolved_config(WEB_CONCURRENCY="3", REDIS_URL="redis://127.0.0.1:6379/0")

    assert (config["workers"], config["workers_from"]) == (3, "WEB_CONCURRENCY")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"REDIS_URL": "localhost:6379"},
            "invalid configuration: REDIS_URL: must start with one of redis://, rediss://, unix://",
        ),
        (
            {"WS_HEARTBEAT_INTERVAL": "30", "WS_IDLE_TIMEOUT": "20"},
            "invalid configuration: WS_IDLE_TIMEOUT must exceed WS_HEARTBEAT_INTERVAL, or a "
            "client would be dropped before it was even asked for a pong",
        ),
    ],
)
def test_bad_room_settings_exit_with_one_readable_line(env: dict[str, str], message: str) -> None:
    result = run_config(**env)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message]
