"""No request is lost when workers die, reload or recycle: real Gunicorn, real workers,
a constant keep-alive load on loopback.

The load generator sends each connection's next request as soon as the last answer came,
like wrk; `lost` counts requests that were sent and never answered. Faults are provoked
at known moments, not after a guessed delay: the fault app (fault_app.py) tells the test
which requests it has in flight, holds requests until the test releases them, and holds
new workers before they serve.
"""

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .baked import Project, Server
from .load import LoadResult, constant_load
from .waiting import wait_for, wait_until

CONNECTIONS = 16
# Each test provokes one fault; a max_requests recycle during it would be a second one
# (at this load a worker reaches the profile's max_requests within seconds).
NO_RECYCLING = "--max-requests 0"
pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


@dataclass
class Faults:
    """The directory the fault app's workers share with the test (see fault_app.py)."""

    directory: Path

    @contextlib.contextmanager
    def serve(self, project: Project, workers: int = 2, **env: str) -> Iterator[Server]:
        with project.serve(
            workers=workers, app="fault_app:app", FAULT_APP_DIR=str(self.directory), **env
        ) as server:
            yield server

    def in_flight(self) -> list[int]:
        """The worker pid of each held or blocking request in flight (a killed worker's
        requests stay listed)."""
        markers = (self.directory / "in-flight").glob("*-*")
        return sorted(int(marker.name.partition("-")[0]) for marker in markers)

    def release(self) -> None:
        """Let every held request, and every one to come, be answered."""
        (self.directory / "release").touch()

    @contextlib.contextmanager
    def new_workers_held(self) -> Iterator[None]:
        """Workers started meanwhile wait before creating the app: they serve nothing."""
        gate = self.directory / "hold-new-workers"
        gate.touch()
        try:
            yield
        finally:
            gate.unlink()


@pytest.fixture
def faults(tmp_path: Path) -> Faults:
    return Faults(tmp_path)


def answered_more(load: LoadResult, more: int) -> None:
    """Wait until the load has had `more` answers from now on."""
    enough = load.ok + more
    wait_for(lambda: load, lambda load: load.ok >= enough, f"{more} more answers under load")


def test_sigkill_loses_only_the_killed_workers_in_flight_requests(
    project: Project, faults: Faults
) -> None:
    with (
        faults.serve(project, GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        answered_more(load, 100)
        victim, survivor = sorted(server.workers())
        with faults.new_workers_held():
            os.kill(victim, signal.SIGKILL)
            # The killed worker's replacement waits: only the survivor can answer this.
            fresh = httpx.get(f"{server.url}/test/worker", timeout=60)
        workers = wait_for(
            server.workers,
            lambda pids: len(pids) == 2 and victim not in pids,
            "the master to replace the killed worker",
        )
        answered_more(load, 100)

    assert fresh.json() == {"pid": survivor}
    assert survivor in workers
    # At most one request in flight per connection the killed worker held.
    assert load.lost <= CONNECTIONS, load


def test_sighup_reload_under_load_loses_nothing_and_old_workers_serve_until_new_ones_do(
    project: Project, faults: Faults, summary: Callable[[str], None]
) -> None:
    with (
        faults.serve(project, GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        answered_more(load, 100)
        before = server.workers()
        with faults.new_workers_held():
            server.signal(signal.SIGHUP)
            wait_for(server.workers, lambda pids: len(pids - before) == 2, "two new workers")
            # The new workers cannot serve yet: the old ones must still be answering.
            answered_more(load, 100)
            old_still_there = server.workers() >= before
        wait_for(
            server.workers,
            lambda pids: len(pids) == 2 and not pids & before,
            "the old workers gone once the new ones serve",
        )
        answered_more(load, 100)

    summary(f"SIGHUP under load: longest time without an answer {load.longest_silence:.2f} s")
    assert old_still_there
    assert (load.lost, load.refused) == (0, 0), load


def test_max_requests_recycling_under_load_loses_nothing(project: Project, faults: Faults) -> None:
    with (
        faults.serve(
            project, GUNICORN_CMD_ARGS="--max-requests 300 --max-requests-jitter 30"
        ) as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        seen: set[int] = set()

        def four_recycled() -> bool:
            seen.update(server.workers())
            return len(seen) >= 2 + 4

        wait_until(four_recycled, "four workers recycled by max_requests")

    assert (load.lost, load.refused) == (0, 0), load
    assert load.ok >= 4 * 300


def lifecycle(server: Server) -> list[str]:
    """What the master and the workers logged but the access log: when each stopped, and why."""
    return sorted(
        f"{entry['time']} {entry['pid']} {entry['message']}"
        for entry in server.log_entries("gunicorn.error") + server.log_entries("uvicorn.error")
    )


def logged(server: Server, message: str) -> set[int]:
    """The workers that have logged `message`."""
    return {
        entry["pid"] for entry in server.log_entries("uvicorn.error") if entry["message"] == message
    }


def graceful_timeout(project: Project) -> float:
    """How long a stopping master waits for its workers, as gunicorn.conf.py resolves it."""
    resolved = project.run("python", "gunicorn.conf.py")
    assert resolved.returncode == 0, resolved.stderr
    return float(json.loads(resolved.stdout)["graceful_timeout"])


def test_sigterm_lets_in_flight_requests_finish(project: Project, faults: Faults) -> None:
    with (
        ThreadPoolExecutor(8) as clients,
        faults.serve(project, GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
    ):
        workers = server.workers()
        # A worker still importing the app would die of SIGTERM at once, not stop gracefully.
        wait_until(
            lambda: logged(server, "Application startup complete.") == workers,
            "both workers serving",
        )
        answers = [
            clients.submit(httpx.get, f"{server.url}/test/held", timeout=120) for _ in range(8)
        ]
        wait_until(lambda: len(faults.in_flight()) == 8, "8 requests in flight")
        server.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        wait_until(
            lambda: logged(server, "Shutting down") == workers, "both workers to begin stopping"
        )
        faults.release()  # only now can the 8 requests finish
        exit_code = server.process.wait(timeout=120)
        took = time.monotonic() - stopped_at
        statuses = [answer.result().status_code for answer in answers]

    assert statuses == [200] * 8
    assert exit_code == 0
    # Past graceful_timeout the master kills what is left: the workers finished first.
    assert took < graceful_timeout(project), "the master outlived graceful_timeout"


@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "new-connections"])
def test_sigterm_under_load_answers_every_request_it_accepted_and_refuses_the_rest(
    project: Project, faults: Faults, keep_alive: bool, summary: Callable[[str], None]
) -> None:
    """Connections still in the listen backlog as the last worker closes the socket are
    reset, their requests sent and lost: the workers take them before they close."""
    with (
        faults.serve(project, GUNICORN_CMD_ARGS=NO_RECYCLING) as server,
        constant_load(server.url, "/health/live", CONNECTIONS, keep_alive=keep_alive) as load,
    ):
        answered_more(load, 200)
        server.signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=120)

    summary(
        f"SIGTERM under load ({'keep-alive' if keep_alive else 'new connections'}): "
        f"{load.lost} requests lost, {load.refused} connections refused after the stop"
    )
    assert exit_code == 0
    assert load.lost == 0, (load, lifecycle(server))


def block_a_worker(url: str) -> None:
    with contextlib.suppress(httpx.TransportError):  # the worker is killed mid-request
        httpx.get(f"{url}/test/block", params={"seconds": 120}, timeout=150)


def test_worker_with_a_blocked_event_loop_is_replaced_while_others_serve(
    project: Project, faults: Faults
) -> None:
    with (
        ThreadPoolExecutor(1) as blocker,
        faults.serve(project, GUNICORN_CMD_ARGS=f"--timeout 5 {NO_RECYCLING}") as server,
        constant_load(server.url, "/health/live", CONNECTIONS) as load,
    ):
        answered_more(load, 100)
        before = server.workers()
        with faults.new_workers_held():
            blocking = blocker.submit(block_a_worker, server.url)
            (blocked,) = wait_for(faults.in_flight, bool, "the blocking request in flight")
            (other,) = before - {blocked}
            # The blocked worker cannot answer, nor (held) its replacement: only the other.
            fresh = httpx.get(f"{server.url}/test/worker", timeout=60)
            wait_until(lambda: blocked not in server.workers(), "the blocked worker's end")
        after = wait_for(
            server.workers, lambda pids: len(pids) == 2, "the blocked worker's replacement"
        )
        answered_more(load, 100)
        blocking.result()

    assert fresh.json() == {"pid": other}
    assert before - after == {blocked}, "exactly the blocked worker is replaced"
    assert "WORKER TIMEOUT" in server.log()
