"""Fan-out: a message published to a room reaches every client in it, on every worker.

Each worker keeps its own clients in `Rooms`. With Redis, a publish goes to Redis, and every
worker (on every machine) hears it through one pattern subscription and hands it to its own
clients in that room. Without Redis, a publish goes straight to this worker's clients, which
is why gunicorn.conf.py then starts a single worker.

A message is serialized once, by the publisher; workers pass the same text to every client.
Redis pub/sub delivers at most once: a message published while a worker is not subscribed
never reaches that worker's clients. So a publish is refused (RoomsUnavailable, an HTTP 503)
unless it can reach every client:
- the publishing worker's own subscription must be live, confirmed by Redis, from the moment
  it loses Redis until it has subscribed again;
- after Redis comes back, the other workers subscribe again each in its own time: until as
  many workers hear a publish as heard this worker's last one before, or until
  `resubscribe_grace` has passed (a worker may be gone for good), the publish is refused.
  Such a message has reached the workers already back: a sender that retries may be heard
  twice by their clients.
Clients stay connected meanwhile, and delivery resumes by itself.
"""

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..health import ReadinessCheck
from ..settings import Settings

logger = logging.getLogger(__name__)

CONNECTED = Gauge("websocket_clients", "WebSocket clients connected.", multiprocess_mode="livesum")
DELIVERED = Counter("websocket_messages_delivered_total", "Messages handed to a client's queue.")
DROPPED = Counter(
    "websocket_slow_clients_total", "Clients disconnected for falling too far behind."
)

# Seconds to wait for the first subscription at start; the worker serves regardless.
FIRST_SUBSCRIPTION_WAIT = 2.0
# Seconds between attempts to subscribe again after Redis went away, doubling up to the max.
RESUBSCRIBE_DELAY, RESUBSCRIBE_DELAY_MAX = 0.1, 2.0


# What a call to Redis raises when Redis is away or restarting: a closed transport (uvloop's
# RuntimeError) included, met by a command sent on a connection Redis has just dropped.
REDIS_AWAY = (RedisError, OSError, RuntimeError)


class RoomsUnavailable(Exception):
    """The message may not reach every client of its room: Redis is away or coming back."""


class Client:
    """One connected WebSocket. What its room has for it waits in a bounded queue."""

    def __init__(self, queue_size: int) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.outbox: asyncio.Queue[str] = asyncio.Queue(queue_size)
        # Set once the client fell `queue_size` messages behind: it is to be disconnected.
        self.overflowed = asyncio.Event()

    def offer(self, payload: str) -> None:
        """Queue a message for the client, never waiting: a full queue marks it too slow."""
        if self.overflowed.is_set():
            return
        try:
            self.outbox.put_nowait(payload)
        except asyncio.QueueFull:
            self.overflowed.set()
            DROPPED.inc()


class Rooms:
    """This worker's clients, by room."""

    def __init__(self) -> None:
        self._rooms: dict[str, set[Client]] = {}

    def join(self, room: str, client: Client) -> None:
        self._rooms.setdefault(room, set()).add(client)
        CONNECTED.inc()

    def leave(self, room: str, client: Client) -> None:
        clients = self._rooms.get(room, set())
        if client in clients:
            clients.remove(client)
            CONNECTED.dec()
        if not clients:
            self._rooms.pop(room, None)

    def deliver(self, room: str, payload: str) -> None:
        clients = self._rooms.get(room, ())
        for client in clients:
            client.offer(payload)
        DELIVERED.inc(len(clients))


class Fanout(Protocol):
    """How a message published on this worker reaches the clients of its room."""

    readiness_checks: dict[str, ReadinessCheck]

    async def publish(self, room: str, payload: str) -> None:
        """Hand a serialized message to every client of the room; RoomsUnavailable if not."""

    def running(self) -> AbstractAsyncContextManager[None]:
        """Whatever fan-out needs while the worker serves."""


class InProcessFanout:
    """Every client is in this process: a publish is a delivery."""

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms
        self.readiness_checks: dict[str, ReadinessCheck] = {}

    async def publish(self, room: str, payload: str) -> None:
        self.rooms.deliver(room, payload)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        logger.warning(
            "REDIS_URL is not set: room messages fan out inside this process only, so the "
            "service runs one worker (gunicorn.conf.py); set REDIS_URL to run more"
        )
        yield


class RedisFanout:
    """Publish to Redis; hear every room's messages through one pattern subscription."""

    def __init__(
        self, url: str, rooms: Rooms, channel_prefix: str, resubscribe_grace: float
    ) -> None:
        self.rooms = rooms
        self.prefix = channel_prefix
        self.resubscribe_grace = resubscribe_grace
        self.redis = Redis.from_url(
            url,
            decode_responses=True,
            # A publish with Redis away fails in about a second (an HTTP 503), after one
            # immediate retry on a fresh connection (the pooled one may predate a restart).
            retry=Retry(NoBackoff(), retries=1),
            socket_connect_timeout=1,
            socket_timeout=2,
            # A Redis host that vanished without closing the connection is noticed within
            # about 10 s, and the subscription is made again.
            socket_keepalive=True,
            socket_keepalive_options=_KEEPALIVE,
        )
        # Set once Redis has confirmed the subscription; clear from the moment it is lost.
        self.subscribed = asyncio.Event()
        # The workers that heard this worker's last publish, and until when (after Redis came
        # back) fewer of them is taken for others not subscribed yet rather than gone.
        self.subscribers = 0
        self.resubscribing_until = 0.0
        self.readiness_checks: dict[str, ReadinessCheck] = {"redis": self.ready}

    def channel(self, room: str) -> str:
        return f"{self.prefix}{room}"

    async def publish(self, room: str, payload: str) -> None:
        if not self.subscribed.is_set():
            raise RoomsUnavailable("not subscribed to Redis")
        try:
            subscribers = await self.redis.publish(self.channel(room), payload)
        except REDIS_AWAY as error:
            raise RoomsUnavailable(f"{type(error).__name__}: {error}") from error
        if subscribers < self.subscribers and time.monotonic() < self.resubscribing_until:
            raise RoomsUnavailable("other workers have not subscribed to Redis again yet")
        self.subscribers = subscribers

    async def ready(self) -> None:
        if not self.subscribed.is_set():
            raise RoomsUnavailable("not subscribed to Redis")
        await self.redis.ping()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        listener = asyncio.create_task(self._listen())
        try:
            async with asyncio.timeout(FIRST_SUBSCRIPTION_WAIT):
                await self.subscribed.wait()
        except TimeoutError:
            logger.warning("Redis did not answer at start; room messages wait for it")
        try:
            yield
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await self.redis.aclose()

    async def _listen(self) -> None:
        """Subscribe, deliver, and subscribe again whenever Redis goes away."""
        delay = RESUBSCRIBE_DELAY
        lost = False
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.psubscribe(f"{self.prefix}*")
                    async for message in pubsub.listen():
                        if message["type"] == "pmessage":
                            room = message["channel"].removeprefix(self.prefix)
                            self.rooms.deliver(room, message["data"])
                        elif message["type"] == "psubscribe":
                            self._confirmed(back=lost)
                            lost, delay = False, RESUBSCRIBE_DELAY
            except REDIS_AWAY as error:
                self.subscribed.clear()
                if not lost:
                    logger.warning(
                        "lost Redis (%s: %s): clients stay connected, publishing answers 503, "
                        "subscribing again until it is back",
                        type(error).__name__,
                        error,
                    )
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_DELAY_MAX)

    def _confirmed(self, back: bool) -> None:
        """Redis has confirmed the subscription: from now on it relays every publish here."""
        if back:
            logger.warning("Redis is back: room messages fan out again")
            self.resubscribing_until = time.monotonic() + self.resubscribe_grace
        self.subscribed.set()


# Probe an idle connection after 5 s, every 2 s, and give up after 3 unanswered probes.
_KEEPALIVE = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}


def create_fanout(settings: Settings, rooms: Rooms) -> Fanout:
    if settings.redis_url is None:
        return InProcessFanout(rooms)
    # Pub/sub channels are shared by every database number of a Redis server: the service's
    # key prefix keeps its rooms apart from any other service's.
    return RedisFanout(
        settings.redis_url,
        rooms,
        f"{settings.redis_key_prefix}room:",
        settings.ws_resubscribe_grace,
    )
