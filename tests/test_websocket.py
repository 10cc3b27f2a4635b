"""The websocket scenario under Gunicorn with real workers: a room spans every worker through
Redis; slow clients, oversized messages, a Redis restart and a shutdown are each handled
without hurting the rest of the room."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .baked import Project, Server, free_port
from .conftest import require_tool
from .waiting import wait_for, wait_until

pytestmark = pytest.mark.parametrize("project", ["websocket"], indirect=True)

# Seconds any single receive, request or stop may take before the test fails: far more
# than one takes on a busy machine, since only a failure comes near it.
WAIT = 60.0
# Small enough that a client that stops reading overflows it within a few megabytes.
SEND_QUEUE = 8


def room_name() -> str:
    """A room of the test's own: the Redis server is shared, and so are its channels."""
    return f"room-{uuid.uuid4().hex[:10]}"


def receive(client: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(client.recv(timeout=WAIT))
    return message


def receive_until(client: ClientConnection, text: str) -> list[dict[str, Any]]:
    """Every message up to and including the first whose text is `text`."""
    received = [receive(client)]
    while received[-1].get("text") != text:
        received.append(receive(client))
    return received


def close_code(client: ClientConnection) -> int | None:
    """Read until the server closes the connection; the code it sent (None: no close frame)."""
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            client.recv(timeout=WAIT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    raise AssertionError("the server did not close the connection")


def clients_on_every_worker(
    server: Server, room: str, count: int, stack: ExitStack
) -> list[tuple[ClientConnection, dict[str, Any]]]:
    """At least `count` clients in the room, two or more on each of the two workers; each
    with its hello, which names its worker. New connections go to whichever worker takes
    them first: a surplus one on a worker that already has its share is closed again."""
    url = server.url.replace("http://", "ws://")
    workers = started_workers(server, 2)
    clients: list[tuple[ClientConnection, dict[str, Any]]] = []

    def one_more_client() -> bool:
        """Connect one; true once there are enough, and enough on each worker."""
        client = stack.enter_context(connect(f"{url}/ws/{room}", open_timeout=WAIT))
        hello = receive(client)
        held = Counter(hello["worker"] for _, hello in clients)
        if len(clients) >= count and held[hello["worker"]] >= 2:
            client.close()
            return False
        clients.append((client, hello))
        held[hello["worker"]] += 1
        return len(clients) >= count and all(held[pid] >= 2 for pid in workers)

    wait_until(one_more_client, f"{count} clients, two or more on each worker", every=0)
    return clients


def started_workers(server: Server, workers: int) -> set[int]:
    """The pids of the workers that have started their app, once there are `workers`."""
    started: set[int] = wait_for(
        lambda: {
            entry["pid"]
            for entry in server.log_entries("uvicorn.error")
            if entry["message"] == "Application startup complete."
        },
        lambda started: len(started) >= workers,
        f"{workers} workers to start their app",
    )
    return started


def publish(server: Server, room: str, text: str) -> httpx.Response:
    return httpx.post(f"{server.url}/rooms/{room}/messages", json={"text": text}, timeout=WAIT)


@pytest.fixture(scope="module")
def server(project: Project, redis_url: str) -> Iterator[Server]:
    """Two workers sharing rooms through the machine's Redis."""
    with project.serve(workers=2, REDIS_URL=redis_url, WS_SEND_QUEUE_SIZE=str(SEND_QUEUE)) as s:
        yield s


def test_a_message_published_over_http_reaches_eight_clients_on_both_workers(
    server: Server,
) -> None:
    room = room_name()
    with ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 8, stack)
        published = publish(server, room, "to everyone")
        received = [receive(client) for client, _ in clients]

    assert published.status_code == 202
    assert {hello["worker"] for _, hello in clients} == server.workers()
    assert len(clients) >= 8
    assert received == [published.json()] * len(clients)


def test_a_message_a_client_sends_reaches_every_other_client_on_both_workers(
    server: Server,
) -> None:
    room = room_name()
    with ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 8, stack)
        (sender, sender_hello), *others = clients
        sender.send(json.dumps({"text": "from a client"}))
        received = [receive(client) for client, _ in others]

    assert {hello["worker"] for _, hello in others} == server.workers()
    assert {message["text"] for message in received} == {"from a client"}
    assert {message["sender"] for message in received} == {sender_hello["client"]}


def test_metrics_count_the_clients_of_every_worker(server: Server) -> None:
    room = room_name()
    before = connected_clients(server, settled_at=0)  # earlier tests' clients have left
    with ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 4, stack)
        during = connected_clients(server, settled_at=len(clients))

    assert before == 0
    assert during == len(clients)


def connected_clients(server: Server, settled_at: int) -> int:
    """`websocket_clients` from /metrics, summed over the workers, once it is `settled_at`
    (a client that just left may not be counted out yet)."""

    def count() -> int:
        metrics = httpx.get(server.metrics_url, timeout=WAIT).text
        found = re.search(r"^websocket_clients (\S+)$", metrics, re.MULTILINE)
        assert found, metrics
        return int(float(found[1]))

    counted: int = wait_for(count, lambda n: n == settled_at, f"{settled_at} clients counted")
    return counted


def slow_client(server: Server, room: str, stack: ExitStack) -> tuple[ClientConnection, int]:
    """A client that reads nothing unless asked: a tiny receive window, one frame of buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    url = server.url.replace("http://", "ws://")
    client = stack.enter_context(
        connect(f"{url}/ws/{room}", sock=sock, max_queue=1, open_timeout=WAIT)
    )
    return client, receive(client)["worker"]


def test_a_client_that_stops_reading_is_dropped_with_1013_and_the_room_goes_on(
    server: Server,
) -> None:
    room = room_name()
    url = server.url.replace("http://", "ws://")
    text = "x" * 60_000
    messages = 300  # 18 MB: more than the slow client's socket buffers and queue hold
    with ExitStack() as stack:
        slow, worker = slow_client(server, room, stack)

        def client_on_the_slow_ones_worker() -> ClientConnection | None:
            client = stack.enter_context(connect(f"{url}/ws/{room}", open_timeout=WAIT))
            if receive(client)["worker"] == worker:
                return client
            client.close()  # now, before it falls behind too
            return None

        # A reading client on the same worker: the one whose fan-out the slow one could stall.
        healthy = wait_for(
            client_on_the_slow_ones_worker,
            lambda client: client is not None,
            "a client on the slow one's worker",
            every=0,
        )
        assert healthy is not None
        with ThreadPoolExecutor(1) as reader:
            # The healthy client reads as the messages come, as a live client does.
            reading = reader.submit(lambda: [receive(healthy)["text"][:4] for _ in range(messages)])
            with httpx.Client(base_url=server.url, timeout=WAIT) as http:
                statuses = {
                    http.post(f"/rooms/{room}/messages", json={"text": f"{n:4}{text}"}).status_code
                    for n in range(messages)
                }
            healthy_got = reading.result(timeout=WAIT)
        # Only now does the slow client read: what was sent before its queue overflowed.
        slow_got = 0
        try:
            while True:
                slow.recv(timeout=WAIT)
                slow_got += 1
        except ConnectionClosed as closed:
            slow_code = closed.rcvd.code if closed.rcvd else None

    assert statuses == {202}
    assert healthy_got == [f"{n:4}" for n in range(messages)]
    assert slow_code == 1013
    assert slow_got < messages


def max_message_size(project: Project) -> int:
    return int(
        project.python(
            f"from {project.path.name}.settings import Settings\n"
            "print(Settings(_env_file=None).ws_max_message_size)"
        )
    )


def test_a_message_over_the_size_limit_closes_that_client_with_1009_only(
    project: Project, server: Server
) -> None:
    room = room_name()
    limit = max_message_size(project)
    with ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 2, stack)
        (offender, _), (bystander, _) = clients[:2]
        offender.send(json.dumps({"text": "x" * limit}))
        offender_code = close_code(offender)
        after = publish(server, room, "still here")
        heard = receive(bystander)
    too_large = publish(server, room, "x" * limit)

    assert offender_code == 1009
    assert after.status_code == 202
    assert heard["text"] == "still here"
    assert too_large.status_code == 413


def errors_logged(server: Server, since: int) -> list[str]:
    """Log lines at ERROR or above, and tracebacks, after the first `since` characters."""
    return [
        line
        for line in server.log()[since:].splitlines()
        if line.startswith("Traceback")
        or (line.startswith("{") and json.loads(line).get("level") in ("error", "critical"))
    ]


@contextmanager
def one_client(server: Server, room: str) -> Iterator[ClientConnection]:
    """A client in the room, past its hello."""
    url = server.url.replace("http://", "ws://")
    with connect(f"{url}/ws/{room}", open_timeout=WAIT) as client:
        receive(client)
        yield client


# A JSON body whose text is one lone surrogate, spelt with JSON's escape: no Unicode text.
LONE_SURROGATE = '{"text": "\\ud800"}'


def test_a_lone_surrogate_in_a_message_is_refused_over_http_and_websocket_without_errors(
    server: Server,
) -> None:
    room, since = room_name(), len(server.log())
    with one_client(server, room) as client:
        answer = httpx.post(
            f"{server.url}/rooms/{room}/messages",
            content=LONE_SURROGATE,
            headers={"content-type": "application/json"},
            timeout=WAIT,
        )
        client.send(LONE_SURROGATE)
        problem = receive(client)
        client.send(json.dumps({"text": "still here"}))
        after = receive(client)

    assert answer.status_code == 422
    assert "surrogate" in answer.text
    assert problem["type"] == "error"
    assert after["text"] == "still here"
    assert errors_logged(server, since) == []


def test_a_text_frame_that_is_not_utf8_closes_with_1007_and_logs_no_error(
    server: Server,
) -> None:
    since = len(server.log())
    with one_client(server, room_name()) as client:
        client.send(b'{"text": "\xff"}', text=True)
        code = close_code(client)
    # Written before the close frame was sent: the log has it now.
    log = server.log()[since:]

    assert code == 1007
    assert errors_logged(server, since) == []
    assert log.count("not UTF-8") == 1


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server of the test's own, which it may stop and start at will."""
    server = require_tool("redis-server")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            assert process.poll() is None, "redis-server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
            except OSError:
                return False
            return True

        wait_until(listening, f"redis-server to listen on port {port}")
        yield process
    finally:
        process.terminate()
        process.wait(timeout=WAIT)


@contextmanager
def serving_on_private_redis(
    project: Project,
) -> Iterator[tuple[Server, subprocess.Popen[bytes], int]]:
    """Two workers sharing rooms through a Redis of the test's own: the server, the Redis
    process, and its port (to start it again on)."""
    port = free_port()
    with (
        private_redis(port) as redis,
        project.serve(workers=2, REDIS_URL=f"redis://127.0.0.1:{port}/0") as server,
    ):
        yield server, redis, port


def test_clients_stay_connected_while_redis_restarts_and_fan_out_resumes_by_itself(
    project: Project,
) -> None:
    room = room_name()
    with serving_on_private_redis(project) as (server, redis, port), ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 4, stack)
        before = publish(server, room, "before")
        assert [receive(client)["text"] for client, _ in clients] == ["before"] * len(clients)

        redis.terminate()
        redis.wait(timeout=WAIT)
        during = publish(server, room, "during")
        ready_during = httpx.get(f"{server.url}/health/ready", timeout=WAIT)
        sender = clients[0][0]
        sender.send(json.dumps({"text": "during, from a client"}))
        problem = receive(sender)

        with private_redis(port):
            heard: set[int] = set()

            def every_client_heard_a_probe() -> bool:
                publish(server, room, "probe")
                for index, (client, _) in enumerate(clients):
                    try:
                        if json.loads(client.recv(timeout=0.2))["text"] == "probe":
                            heard.add(index)
                    except TimeoutError:
                        pass
                return len(heard) == len(clients)

            # Publish until each client has heard one: every worker has subscribed again.
            wait_until(every_client_heard_a_probe, "every worker to subscribe again", every=0)
            after = publish(server, room, "after")
            received = [receive_until(client, "after")[-1] for client, _ in clients]

    assert before.status_code == 202
    assert during.status_code == 503
    assert ready_during.status_code == 503
    assert list(ready_during.json()["failed"]) == ["redis"]
    assert problem["type"] == "error"
    assert after.status_code == 202
    assert received == [after.json()] * len(clients)
    assert "lost Redis" in server.log()
    assert "Redis is back" in server.log()


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: it runs no code, its sockets stay open."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class SteadyPublisher:
    """POSTs numbered messages to a room at a steady rate, in a thread, until stopped."""

    server: Server
    room: str
    answers: list[httpx.Response] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = time.monotonic()
        # A connection per message: one kept alive might be held by a stopped worker.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.server.url, timeout=WAIT, limits=fresh) as http:
            for n in range(PUBLISH_RATE * WAIT_PUBLISHING):
                if self.stop.is_set():
                    return
                self.answers.append(
                    http.post(f"/rooms/{self.room}/messages", json={"text": f"m{n}"})
                )
                # Paced, not waiting on anything: the rate is the load.
                time.sleep(max(0.0, started + (n + 1) / PUBLISH_RATE - time.monotonic()))

    def count(self, status: int, since: int = 0) -> int:
        return sum(answer.status_code == status for answer in self.answers[since:])


# Messages per second published during a Redis restart, and the most seconds it may go on.
PUBLISH_RATE = 50
WAIT_PUBLISHING = 60


def test_every_message_accepted_while_redis_restarts_reaches_every_client_of_every_worker(
    project: Project, summary: Callable[[str], None]
) -> None:
    room = room_name()
    with serving_on_private_redis(project) as (server, redis, port), ExitStack() as stack:
        joined = clients_on_every_worker(server, room, 4, stack)
        clients, late_worker = [client for client, _ in joined], joined[0][1]["worker"]
        threads = stack.enter_context(ThreadPoolExecutor(len(clients) + 1))
        readings = [threads.submit(receive_until, client, "after") for client in clients]
        publisher = SteadyPublisher(server, room)
        publishing = threads.submit(publisher.run)
        wait_until(lambda: publisher.count(202) >= PUBLISH_RATE, "a second of messages")

        redis.terminate()
        redis.wait(timeout=WAIT)
        # Away for a second of messages: the workers' attempts to subscribe again have
        # spread out by the time it returns.
        wait_until(lambda: publisher.count(503) >= PUBLISH_RATE, "a second of refusals")
        with private_redis(port), Redis(port=port) as returned:
            # One worker is late to subscribe again: it is stopped until the other has
            # subscribed and answered half a second of publishes.
            with stopped(late_worker):
                wait_until(
                    lambda: len(returned.client_list(_type="pubsub")) == 1,
                    "the other worker to subscribe again",
                )
                answered = len(publisher.answers)
                wait_until(
                    lambda: len(publisher.answers) >= answered + PUBLISH_RATE // 2,
                    "half a second of publishes while one worker is back",
                )
            back_at = len(publisher.answers)
            # Two seconds of messages accepted again: every worker has subscribed again.
            wait_until(
                lambda: publisher.count(202, since=back_at) >= 2 * PUBLISH_RATE,
                "two seconds of messages accepted after Redis came back",
            )
            publisher.stop.set()
            publishing.result(timeout=WAIT)
            after = publish(server, room, "after")
            received = [
                {message["text"] for message in reading.result(timeout=WAIT)}
                for reading in readings
            ]

    accepted = {answer.json()["text"] for answer in publisher.answers if answer.status_code == 202}
    refused = [answer for answer in publisher.answers if answer.status_code == 503]
    lost = sum(len(accepted - heard) for heard in received)
    missed_by_some = len(accepted - set.intersection(*received))
    assert after.status_code == 202
    assert {answer.status_code for answer in publisher.answers} == {202, 503}
    assert {answer.headers.get("retry-after") for answer in refused} == {"1"}
    assert lost == 0, (
        f"{missed_by_some} of {len(accepted)} accepted messages missed by some of "
        f"{len(received)} clients ({lost} deliveries lost)"
    )
    summary(
        f"rooms, Redis restarted under {PUBLISH_RATE} messages/s: {len(accepted)} accepted and "
        f"heard by all {len(received)} clients, {len(refused)} answered 503"
    )


def test_shutdown_closes_every_client_on_every_worker_with_1001(
    project: Project, redis_url: str
) -> None:
    room = room_name()
    with project.serve(workers=2, REDIS_URL=redis_url) as server, ExitStack() as stack:
        clients = clients_on_every_worker(server, room, 4, stack)
        server.stop()  # SIGTERM to the master, as systemd, Kubernetes or Docker send it
        codes = [close_code(client) for client, _ in clients]

    assert len({hello["worker"] for _, hello in clients}) == 2
    assert codes == [1001] * len(clients)


def test_without_redis_one_worker_serves_the_room_and_the_log_says_why(
    project: Project,
) -> None:
    room = room_name()
    with project.serve(workers=2) as server, ExitStack() as stack:
        url = server.url.replace("http://", "ws://")
        clients = [
            stack.enter_context(connect(f"{url}/ws/{room}", open_timeout=WAIT)) for _ in range(3)
        ]
        workers = {receive(client)["worker"] for client in clients}
        published = publish(server, room, "in-process")
        received = [receive(client) for client in clients]
        running = server.workers()

    assert len(running) == 1
    assert workers == running
    assert published.status_code == 202
    assert received == [published.json()] * 3
    assert "REDIS_URL is not set" in server.log()


def test_the_baked_suite_passes_with_redis_and_skips_nothing(
    project: Project, redis_url: str
) -> None:
    result = project.make("test", REDIS_URL=redis_url)

    assert " passed" in result.stdout
    assert " failed" not in result.stdout
    assert " skipped" not in result.stdout
