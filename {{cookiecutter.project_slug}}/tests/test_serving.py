"""No request is lost, and some worker always serves, while Gunicorn replaces its workers
on a reload (SIGHUP) or as they recycle after `max_requests`, under a keep-alive load: the
real Gunicorn, this project's gunicorn.conf.py, two real workers.

Stock Uvicorn closes a stopping worker's idle keep-alive connections at once, and a client
sending its next request on one of them loses it; its workers leave together, and nothing
serves while their successors start. The project's worker (serving/gunicorn_worker.py)
drains those connections and leaves only while another worker serves. It also refuses a
request head over Gunicorn's limits or too slow to come, before the app sees it. It relies
on private parts of Uvicorn, uvicorn-worker and Gunicorn (serving/__init__.py lists them):
a release that changes one fails these tests.
"""

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
import uvicorn
from fastapi import Request
from starlette.types import Receive, Scope, Send

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.serving.admission import FLOOR, Admission
from {{ cookiecutter.project_slug }}.serving.gunicorn_worker import RequestLimits, ServingProtocol
from {{ cookiecutter.project_slug }}.settings import Settings

from .gunicorn_server import (
    Gunicorn,
    Load,
    free_port,
    gunicorn,
    keep_alive_load,
    read_answer,
    wait_until,
)

CLIENTS = 4
# Seconds each client waits between an answer and its next request: its connection is then
# idle most of the time, as a stopping worker finds a keep-alive connection, and the
# clients leave the CPUs to the workers, which must start while the load goes on.
PAUSE = 0.02
# Answers the load gets between the steps of a test: each step has then served some.
ANSWERS = 100
# Two workers whatever gunicorn.conf.py would choose here: these tests are about worker
# processes, and ask only /health/live.
TWO_WORKERS = "--workers 2"


@contextmanager
def under_load(
    workdir: Path, arguments: str, environment: dict[str, str]
) -> Iterator[tuple[Gunicorn, Load]]:
    """Two workers started with these Gunicorn `arguments`, under the keep-alive load."""
    env = {"GUNICORN_CMD_ARGS": f"{TWO_WORKERS} {arguments}", **environment}
    with (
        gunicorn(workdir, env) as server,
        keep_alive_load(server.port, "/health/live", CLIENTS, PAUSE) as load,
    ):
        yield server, load


def test_a_reload_under_keep_alive_load_loses_no_request_and_old_workers_serve_till_new_ones_do(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    # Old workers wait for the new ones at most graceful_timeout (10 s in some profiles): a
    # busy machine may take longer to start a worker.
    no_recycling = "--max-requests 0 --graceful-timeout 60"
    with under_load(tmp_path, no_recycling, server_environment) as (server, load):
        load.wait_for_answers(ANSWERS)
        old_workers = server.workers()

        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not server.workers() & old_workers and len(server.serving_workers()) == 2,
            "two new workers serving, and the old ones gone",
        )
        load.wait_for_answers(ANSWERS)
        stopped_alone = server.stops_while_none_other_served()

    assert (load.lost, load.refused) == (0, 0), load
    assert set(load.answered) == {200}, load
    assert stopped_alone == [], "the old workers stopped before the new ones served"


@pytest.mark.parametrize(
    ("arguments", "limit"),
    [
        ("--max-requests 50 --max-requests-jitter 0", {}),
        # Both workers reach their lifetime together: they still take turns.
        (
            "--max-requests 0",
            {"GUNICORN_MAX_WORKER_LIFETIME": "2", "GUNICORN_MAX_WORKER_LIFETIME_JITTER": "0"},
        ),
    ],
    ids=["after max_requests", "after max_worker_lifetime"],
)
def test_recycling_under_keep_alive_load_loses_no_request_and_workers_take_turns(
    tmp_path: Path, server_environment: dict[str, str], arguments: str, limit: dict[str, str]
) -> None:
    with under_load(tmp_path, arguments, server_environment | limit) as (server, load):
        first_workers = server.workers()

        wait_until(lambda: not server.workers() & first_workers, "both first workers recycled")
        load.wait_for_answers(ANSWERS)
        stopped_alone = server.stops_while_none_other_served()
        recycled = re.findall(r"recycling after (\d+) requests, (\d+) s", server.log())
        recycled_after = [(int(requests), int(seconds)) for requests, seconds in recycled]

    assert (load.lost, load.refused) == (0, 0), load
    assert set(load.answered) == {200}, load
    assert stopped_alone == [], "workers recycled at once, leaving none to serve"
    assert len(recycled_after) >= 2, server.lifecycle()
    if limit:  # by age, however few requests a worker served
        assert all(seconds >= 2 for _, seconds in recycled_after), recycled_after
    else:
        assert all(requests >= 50 for requests, _ in recycled_after), recycled_after


def answer_to(port: int, request: bytes) -> int:
    """The status of the answer to `request`, sent on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return read_answer(connection)[0]


def test_a_head_over_its_limits_or_too_slow_is_refused_before_the_app(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    limits = "--limit-request-line 100 --limit-request-fields 10 --limit-request-field_size 100"
    many_headers = b"".join(b"x-%d: 1\r\n" % n for n in range(11))
    with gunicorn(
        tmp_path,
        {"GUNICORN_CMD_ARGS": limits, "HEADER_TIMEOUT": "0.5", **server_environment},
        workers=1,
    ) as server:
        statuses = [
            answer_to(server.port, request)
            for request in (
                b"GET /health/live?%s HTTP/1.1\r\nhost: a\r\n\r\n" % (b"q" * 100),
                b"GET /health/live HTTP/1.1\r\nhost: a\r\n%s\r\n" % many_headers,
                b"GET /health/live HTTP/1.1\r\nx-big: %s\r\n\r\n" % (b"b" * 100),
                b"GET /health/live HTTP/1.1\r\nhost: a\r\n",  # and nothing more
            )
        ]

    assert statuses == [414, 431, 431, 408]


@pytest.mark.anyio
async def test_a_request_that_waited_too_long_gets_a_fast_503_and_never_reaches_its_route(
    settings: Settings,
) -> None:
    app = create_app(settings.model_copy(update={"max_request_wait": 0.05}))
    reached = []

    @app.get("/work")
    async def work() -> dict[str, str]:
        reached.append("work")
        return {}

    def read(seconds_ago: float) -> httpx.ASGITransport:
        """The app, each request's head read `seconds_ago`, as the project's worker stamps it."""

        async def stamped(scope: Scope, receive: Receive, send: Send) -> None:
            scope["extensions"] = {"head_read_at": time.monotonic() - seconds_ago}
            await app(scope, receive, send)

        return httpx.ASGITransport(app=stamped)

    async with httpx.AsyncClient(transport=read(0.2), base_url="http://test") as late:
        shed = await late.get("/work")
        live = await late.get("/health/live")
    assert (shed.status_code, shed.headers.get("retry-after")) == (503, "1")
    assert reached == [], "a shed request reached its route"
    assert live.status_code == 200, "health checks are never shed"

    async with httpx.AsyncClient(transport=read(0.01), base_url="http://test") as prompt:
        served = await prompt.get("/work")
    assert served.status_code == 200
    assert reached == ["work"]


def test_the_limit_in_flight_follows_how_long_requests_wait_for_the_event_loop() -> None:
    admission = Admission(most=100, target=0.005, interval=0.1, hold=0.02, shed=print, answer=b"")
    assert all(admission.admit() for _ in range(50))
    admission.waited(0.0, now=1.0)  # the first look starts an interval

    # Every request of an interval late: saturated, at 201 requests in 0.1 s, which hold
    # 2,010 a second x 0.02 s = 40.2 requests in flight.
    for n in range(200):
        admission.waited(0.02, now=1.0 + n * 0.0005)
    assert admission.limit == 100, "judged once the interval is over"
    admission.waited(0.02, now=1.1)
    assert admission.limit == pytest.approx(40.2, rel=1e-3)
    assert not admission.admit(), "50 in flight, past the limit"
    for _ in range(10):
        admission.done()
    assert admission.admit(), "40 in flight, under it"
    assert not admission.admit()

    # An interval with only a few late requests is a stall, not saturation: the limit grows.
    for now in (1.15, 1.16, 1.17):
        admission.waited(0.05, now=now)
    admission.waited(0.0, now=1.25)
    assert admission.limit == pytest.approx(40.2 * 1.1 + 1, rel=1e-3)

    # Saturated at a few requests a second: never under the floor.
    for n in range(10):
        admission.waited(0.05, now=1.26 + n * 0.01)
    admission.waited(0.05, now=1.4)
    assert admission.limit == FLOOR

    for n in range(40):  # prompt intervals: back up to, and never past, the most
        admission.waited(0.0, now=1.6 + n * 0.2)
    assert admission.limit == 100


def test_without_a_target_the_limit_in_flight_stays_where_it_is_set() -> None:
    admission = Admission(most=2, target=0, interval=0, hold=0, shed=print, answer=b"")
    admission.waited(10.0, now=1.0)
    assert (admission.admit(), admission.admit(), admission.admit()) == (True, True, False)


def test_requests_that_wait_behind_others_in_a_real_worker_are_shed_with_a_503(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    """Pipelined on one connection, each request waits for those before it: the worker
    stamps every head as it reads them all at once, and sheds those that waited too long.
    Enough requests that answering them all takes well over MAX_REQUEST_WAIT on any machine
    (about 0.1 ms each on a fast one), sent from a thread while the answers are read."""
    count = 3000
    environment = {"MAX_REQUEST_WAIT": "0.2", **server_environment}
    with gunicorn(tmp_path, environment, workers=1) as server:
        request = b"GET /no-such-page HTTP/1.1\r\nhost: a\r\n\r\n"
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection,
            connection.makefile("rb") as answers,
        ):
            # One request first: a new connection's first request may also have waited to
            # be accepted, which is another test's.
            connection.sendall(b"GET /health/live HTTP/1.1\r\nhost: a\r\n\r\n")
            assert statuses_and_retry(answers) == (200, None)
            sending = threading.Thread(target=connection.sendall, args=(request * count,))
            sending.start()
            statuses = [statuses_and_retry(answers) for _ in range(count)]
            sending.join()

    # The worker reads what the client sent in a few batches, each stamped as it is read:
    # the first of a batch waits for little (the batch's reading), the last for all before
    # it; those past the limit in flight are shed too.
    assert set(statuses) == {(404, None), (503, "1")}, statuses


def test_a_request_that_waited_in_the_listen_backlog_is_shed_with_a_503(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    """The worker cannot take a new connection while it is busy (stopped, here): its
    request waits in the kernel, which the worker counts as waiting too."""
    environment = {"MAX_REQUEST_WAIT": "0.2", **server_environment}
    request = b"GET /no-such-page HTTP/1.1\r\nhost: a\r\n\r\n"
    with gunicorn(tmp_path, environment, workers=1) as server:
        (worker,) = server.workers()
        os.kill(worker, signal.SIGSTOP)
        try:
            waiting = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            waiting.sendall(request)
            time.sleep(0.5)  # what the test is about: a request older than MAX_REQUEST_WAIT
        finally:
            os.kill(worker, signal.SIGCONT)
        with waiting, waiting.makefile("rb") as answer:
            late = statuses_and_retry(answer)
        prompt = answer_to(server.port, request)

    assert late == (503, "1")
    assert prompt == 404


@pytest.mark.anyio
async def test_the_workers_protocol_sheds_a_request_before_the_app_sees_it(
    settings: Settings,
) -> None:
    """Under the worker's own protocol, a request past the limit is answered by the
    protocol: the app (here wrapped to note every request it is given) never sees it."""
    app = create_app(
        settings.model_copy(update={"max_concurrent_requests": 1, "max_request_wait": 0})
    )
    seen: list[str] = []

    @app.post("/held")
    async def held_until_its_body_comes(request: Request) -> dict[str, str]:
        await request.body()
        return {}

    async def noting(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)

    ServingProtocol.configure(RequestLimits(0, 0, 0, header_timeout=10, body_timeout=10))
    server = uvicorn.Server(uvicorn.Config(noting, http=ServingProtocol, log_config=None))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (Uvicorn's server has no event for it)
                await asyncio.sleep(0.01)
            port = listener.getsockname()[1]
            _, held = await asyncio.open_connection("127.0.0.1", port)
            held.write(b"POST /held HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{")
            while seen != ["/held"]:  # noqa: ASYNC110 (the app notes it, no event)
                await asyncio.sleep(0.01)
            answers, asking = await asyncio.open_connection("127.0.0.1", port)
            asking.write(b"GET /shed HTTP/1.1\r\nhost: a\r\n\r\n")
            head = await answers.readuntil(b"\r\n\r\n")
            held.close()
            asking.close()
    finally:
        server.should_exit = True
        await serving

    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in head.lower()
    assert seen == ["/held"], "the shed request never reached the app"


def test_past_its_limit_in_flight_a_real_worker_answers_503_itself_and_keeps_the_connection(
    tmp_path: Path, server_environment: dict[str, str], settings: Settings
) -> None:
    """One request in flight at most: while a request whose body is still coming holds that
    place, every other one gets a 503 with Retry-After from the worker's protocol, on a
    connection that stays open, without being routed (counted with no route); health
    checks still answer; and once the held request is answered, requests are served again."""
    paths = create_app(settings).openapi()["paths"]
    post = next(path for path, operations in paths.items() if "post" in operations)
    path = re.sub(r"{[^}]+}", "x", post).encode()
    metrics_port = free_port()
    environment = {
        "MAX_CONCURRENT_REQUESTS": "1",
        "MAX_REQUEST_WAIT": "0",  # a limit that stays where it is set
        "METRICS_PORT": str(metrics_port),
        **server_environment,
    }
    other = b"GET /no-such-page HTTP/1.1\r\nhost: a\r\n\r\n"
    with (
        gunicorn(tmp_path, environment, workers=1) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as held,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection,
        connection.makefile("rb") as answers,
    ):
        # A JSON body or a form: either way, the route reads it to its end before it answers.
        held.sendall(
            b"POST %s HTTP/1.1\r\nhost: a\r\ncontent-type: multipart/form-data; boundary=b\r\n"
            b"content-length: 2\r\n\r\n-" % path
        )

        def shed() -> bool:
            connection.sendall(other)
            return statuses_and_retry(answers) == (503, "1")

        wait_until(shed, "a request past the limit in flight is shed")
        statuses = []
        whole_post = b"POST %s HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}" % path
        for request in (other, whole_post):
            connection.sendall(request)
            statuses.append(statuses_and_retry(answers))
        connection.sendall(b"GET /health/live HTTP/1.1\r\nhost: a\r\n\r\n")
        live = statuses_and_retry(answers)[0]
        held.sendall(b"-")
        with held.makefile("rb") as held_answer:
            held_status = statuses_and_retry(held_answer)[0]
        connection.sendall(other)
        after = statuses_and_retry(answers)[0]
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text

    assert statuses == [(503, "1"), (503, "1")], "shed on the same open connection"
    assert live == 200, "health checks are never shed"
    assert held_status != 503
    assert after == 404, "the place in flight is free again once the held request is answered"
    refused = re.search(r'http_requests_refused_total{reason="overloaded"} (\S+)', metrics)
    never_routed = sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("http_requests_total{")
        and 'handler="none"' in line  # no route matched: the app never saw it
        and 'status="5xx"' in line
    )
    assert refused
    assert float(refused[1]) >= 3
    assert never_routed == float(refused[1]), "each shed request counted, none routed"


def statuses_and_retry(answers: BinaryIO) -> tuple[int, str | None]:
    """The status and Retry-After of the next answer on a connection (read whole)."""
    status = int(answers.readline().split()[1])
    headers = {}
    while (line := answers.readline()) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    answers.read(int(headers.get("content-length", "0")))
    return status, headers.get("retry-after")
