"""No request is lost when workers die, reload or recycle: real Gunicorn, real workers,
a constant keep-alive load on loopback.

The load generator sends each connection's next request as soon as the last answer came,
like wrk; `lost` counts requests that were sent and never answered.
"""

import contextlib
import os
import signal
import threading
import time

import httpx
import pytest

from .baked import Project
from .load import constant_load

CONNECTIONS = 16
# Each test provokes one fault; a max_requests recycle during it would be a second one
# (at this load a worker reaches the profile's max_requests within seconds).
NO_RECYCLING = "--max-requests 0"
pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


def test_sigkill_loses_only_the_killed_workers_in_flight_requests(project: Project) -> None:
    with (
        project.serve(workers=2, app="fault_app:app", GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        time.sleep(1)
        victim = min(server.workers())
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        fresh = httpx.get(f"{server.url}/health/live", timeout=2)
        answered_within = time.monotonic() - killed_at
        workers = server.wait_for_workers(lambda pids: len(pids) == 2 and victim not in pids)
        time.sleep(0.5)

    assert fresh.status_code == 200
    assert answered_within < 2
    assert len(workers) == 2, "the master did not replace the killed worker"
    assert victim not in workers
    # At most one request in flight per connection the killed worker held.
    assert load.lost <= CONNECTIONS, load
    assert load.ok > 100


def test_sighup_reload_under_load_loses_nothing(project: Project) -> None:
    with (
        project.serve(workers=2, app="fault_app:app", GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        time.sleep(1)
        before = server.workers()
        server.signal(signal.SIGHUP)
        after = server.wait_for_workers(lambda pids: len(pids) == 2 and not pids & before)
        time.sleep(1)

    assert len(after) == 2, "the reload did not replace both workers"
    assert not after & before
    assert (load.lost, load.refused) == (0, 0), load
    assert load.ok > 100


def test_max_requests_recycling_under_load_loses_nothing(project: Project) -> None:
    recycled: set[int] = set()
    with (
        project.serve(
            workers=2,
            app="fault_app:app",
            GUNICORN_CMD_ARGS="--max-requests 300 --max-requests-jitter 30",
        ) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        deadline = time.monotonic() + 20
        while len(recycled) < 6 and time.monotonic() < deadline:
            recycled |= server.workers()
            time.sleep(0.05)

    assert len(recycled) >= 6, "fewer than four workers were recycled"
    assert (load.lost, load.refused) == (0, 0), load
    assert load.ok >= 4 * 300


def test_sigterm_lets_in_flight_requests_finish(project: Project) -> None:
    answers: list[httpx.Response] = []

    def slow_request(url: str) -> None:
        answers.append(httpx.get(f"{url}/test/sleep", params={"seconds": 2}, timeout=30))

    with project.serve(workers=2, app="fault_app:app", GUNICORN_CMD_ARGS=NO_RECYCLING) as server:
        clients = [threading.Thread(target=slow_request, args=(server.url,)) for _ in range(8)]
        for client in clients:
            client.start()
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        exit_code = server.process.wait(timeout=60)
        took = time.monotonic() - stopped_at
        for client in clients:
            client.join()

    assert [answer.status_code for answer in answers] == [200] * 8
    assert exit_code == 0
    assert took < 30, "the master outlived graceful_timeout"


def block_a_worker(url: str) -> None:
    with contextlib.suppress(httpx.TransportError):  # the worker is killed mid-request
        httpx.get(f"{url}/test/block", params={"seconds": 30}, timeout=40)


def test_worker_with_a_blocked_event_loop_is_replaced_while_others_serve(
    project: Project,
) -> None:
    with project.serve(
        workers=2, app="fault_app:app", GUNICORN_CMD_ARGS=f"--timeout 3 {NO_RECYCLING}"
    ) as server:
        before = server.workers()
        blocker = threading.Thread(target=block_a_worker, args=(server.url,), daemon=True)
        with constant_load(server.url, "/health/live", CONNECTIONS) as load:
            time.sleep(0.5)
            blocker.start()
            time.sleep(1)
            answered_while_blocked = load.ok
            after = server.wait_for_workers(
                lambda pids: len(pids) == 2 and pids != before, within=30
            )
            # On a busy machine the next 100 answers may take more than a second.
            deadline = time.monotonic() + 10
            while load.ok <= answered_while_blocked + 100 and time.monotonic() < deadline:
                time.sleep(0.1)
            answered_after = load.ok

    assert len(after) == 2
    assert len(before - after) == 1, "exactly the blocked worker is replaced"
    assert answered_after > answered_while_blocked + 100, "the other worker kept serving"
    assert "WORKER TIMEOUT" in server.log()
