"""Across real Gunicorn workers: the database connection budget holds under load, and
metrics count every request exactly once, whichever worker served it and whatever became
of that worker."""

import os
import re
import signal
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .baked import Project
from .load import LoadResult, constant_load
from .waiting import wait_for, wait_until

pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


def answered(load: LoadResult, count: int) -> None:
    """Wait until the load has had `count` answers in all."""
    wait_for(lambda: load, lambda load: load.ok >= count, f"{count} answers under load")


def test_workers_never_hold_more_connections_than_the_budget(
    project: Project, postgres_url: str
) -> None:
    database = project.database(postgres_url)
    postgres_port = urlsplit(postgres_url).port or 5432

    most, pids_seen = 0, set()
    with (
        project.serve(workers=2, DB_MAX_CONNECTIONS="4", **database) as server,
        constant_load(server.url, "/items?limit=5", connections=32) as load,
    ):

        def sampled_under_load() -> bool:
            nonlocal most
            most = max(most, server.connections_to(postgres_port))
            pids_seen.update(server.workers())
            return load.ok >= 1000

        # Connections counted all along 1,000 answers to 32 clients at once.
        wait_until(sampled_under_load, "1,000 answers under load", every=0.02)

    assert 2 <= most <= 4, (
        f"{most} connections open at once for a budget of 4 (worker pids: {sorted(pids_seen)})"
    )


def requests_counted(metrics: str, route: str) -> int:
    """The sum of http_requests_total for one route, over every method and status class."""
    return sum(
        int(float(value))
        for counted_route, value in re.findall(
            r'^http_requests_total\{[^}]*handler="([^"]*)"[^}]*\} (\S+)$', metrics, re.MULTILINE
        )
        if counted_route == route
    )


def test_metrics_count_every_request_across_killed_and_recycled_workers(
    project: Project,
) -> None:
    database = project.database(None)

    # No shedding: a request shed on a loaded machine is counted under route "unmatched".
    with project.serve(
        workers=2,
        GUNICORN_CMD_ARGS="--max-requests 400 --max-requests-jitter 1",
        MAX_REQUEST_WAIT="0",
        **database,
    ) as server:
        with constant_load(server.url, "/items", connections=8) as before_kill:
            answered(before_kill, 200)
        victim = min(server.workers())
        os.kill(victim, signal.SIGKILL)
        wait_for(
            server.workers,
            lambda pids: len(pids) == 2 and victim not in pids,
            "the killed worker's replacement",
        )
        with constant_load(server.url, "/items", connections=8) as after_kill:
            pids_seen = server.workers()

            def two_recycled() -> bool:
                pids_seen.update(server.workers())
                return len(pids_seen) >= 2 + 2

            wait_until(two_recycled, "two workers recycled by max_requests")
        metrics = httpx.get(server.metrics_url, timeout=30).text

    sent = sum(before_kill.answered.values()) + sum(after_kill.answered.values())
    assert (before_kill.lost, after_kill.lost) == (0, 0)
    assert requests_counted(metrics, "/items") == sent


def test_every_answer_has_its_access_log_line_a_graceful_stop_included(
    project: Project,
) -> None:
    # Each worker writes the lines of a turn of its event loop together, after that turn.
    with project.serve(workers=2, **project.database(None)) as server:
        with constant_load(server.url, "/health/ready", connections=16) as load:
            answered(load, 500)
            server.stop()  # SIGTERM under load: the workers drain and exit
        logged = Counter(
            entry["status"]
            for entry in server.log_entries("access")
            if entry["path"] == "/health/ready"
        )

    assert logged == load.answered


def test_workers_take_turns_to_recycle(project: Project) -> None:
    # Without jitter, two evenly loaded workers reach max_requests at the same moment.
    database = project.database(None)

    with project.serve(
        workers=2, GUNICORN_CMD_ARGS="--max-requests 300 --max-requests-jitter 0", **database
    ) as server:
        with constant_load(server.url, "/health/live", connections=8) as load:

            def a_worker_waited_its_turn() -> bool:
                # The raw log: parsing all of it, access lines included, costs much more.
                log = server.log()
                recycles = log.count('"message": "recycling after')
                return recycles >= 2 and '"message": "past max_requests' in log

            wait_until(a_worker_waited_its_turn, "a worker to wait for its turn", every=0.5)
        events = [
            (entry["message"], entry["pid"])
            for entry in server.log_entries("uvicorn.error")
            if entry["message"] == "Application startup complete."
            or entry["message"].startswith(("recycling after", "past max_requests"))
        ]

    serving: set[int] = set()
    fewest = 2
    for message, pid in events:
        if message.startswith("recycling"):
            serving.discard(pid)
            fewest = min(fewest, len(serving))
        elif message.startswith("Application"):
            serving.add(pid)
    assert fewest == 1, f"a worker left while its sibling was not serving: {events}"
    assert load.lost == 0, load


def test_master_wipes_metrics_left_by_an_earlier_run(project: Project, tmp_path: Path) -> None:
    # Samples an earlier run left behind, as a crashed master would leave them.
    stale = project.run(
        "python",
        "-c",
        "from my_service.serving.metrics import REQUESTS\n"
        "REQUESTS.labels('GET', '2xx', '/items').inc(5)",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    assert stale.returncode == 0, stale.stderr
    assert list(tmp_path.glob("counter_*.db"))
    database = project.database(None)

    with project.serve(workers=1, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), **database) as server:
        httpx.get(f"{server.url}/items", timeout=30)
        metrics = httpx.get(server.metrics_url, timeout=30).text

    assert requests_counted(metrics, "/items") == 1
