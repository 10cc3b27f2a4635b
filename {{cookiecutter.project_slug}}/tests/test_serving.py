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

import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .gunicorn_server import Gunicorn, Load, gunicorn, keep_alive_load, read_answer, wait_until

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


def test_recycling_under_keep_alive_load_loses_no_request_and_workers_take_turns(
    tmp_path: Path, server_environment: dict[str, str]
) -> None:
    recycling = "--max-requests 50 --max-requests-jitter 0"
    with under_load(tmp_path, recycling, server_environment) as (server, load):
        first_workers = server.workers()

        wait_until(lambda: not server.workers() & first_workers, "both first workers recycled")
        load.wait_for_answers(ANSWERS)
        stopped_alone = server.stops_while_none_other_served()

    assert (load.lost, load.refused) == (0, 0), load
    assert set(load.answered) == {200}, load
    assert stopped_alone == [], "workers recycled at once, leaving none to serve"


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
