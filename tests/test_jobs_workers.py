"""The batch scenario with real Celery workers: jobs submitted over HTTP to Gunicorn finish
correctly on Redis, RabbitMQ and the embedded SQLite broker, and a worker killed in the
middle of a job loses nothing on the real brokers."""

import functools
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .baked import Project, Server

pytestmark = pytest.mark.parametrize("project", ["batch"], indirect=True)

FINISHED = ("succeeded", "failed")
# Big enough that aggregating it keeps a worker busy for a few seconds.
BIG_ROWS = 3_000_000
LIMITS = {
    "MAX_UPLOAD_SIZE": str(64 * 1024 * 1024),
    # Redis hands a lost worker's job to another after this: short, to keep the test short.
    "CELERY_VISIBILITY_TIMEOUT": "20",
    "CELERY_TIME_LIMIT": "18",
    "CELERY_SOFT_TIME_LIMIT": "15",
}


@functools.cache
def csv_file(rows: int, seed: int) -> tuple[bytes, dict[str, dict[str, float]]]:
    """A CSV of `rows` values in a few groups, and its expected statistics."""
    rng = random.Random(seed)
    groups: defaultdict[str, list[float]] = defaultdict(list)
    lines = ["id,group,value"]
    for n in range(rows):
        group, value = f"g{rng.randrange(5)}", round(rng.uniform(-1000, 1000), 3)
        groups[group].append(value)
        lines.append(f"{n},{group},{value}")
    expected = {
        group: {
            "count": len(values),
            "sum": sum(values),
            "min": min(values),
            "max": max(values),
            "median": statistics.median(values),
        }
        for group, values in groups.items()
    }
    return ("\n".join(lines) + "\n").encode(), expected


def submit(server: Server, data: bytes) -> str:
    answer = httpx.post(f"{server.url}/jobs", files={"file": ("data.csv", data)}, timeout=30)
    assert answer.status_code == 202, answer.text
    status_url: str = answer.json()["status_url"]
    return status_url


def wait_for(status_url: str, statuses: tuple[str, ...], within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while (job := httpx.get(status_url).json())["status"] not in statuses:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return job


def assert_result(job: dict[str, Any], expected: dict[str, dict[str, float]]) -> None:
    assert job["status"] == "succeeded", job
    groups = job["result"]["groups"]
    assert groups.keys() == expected.keys()
    for group, figures in expected.items():
        for name, value in figures.items():
            assert groups[group][name] == pytest.approx(value), (group, name)


@pytest.fixture(params=["redis", "rabbitmq", "sqlite"])
def broker(request: pytest.FixtureRequest, project: Project) -> str:
    if request.param == "sqlite":
        return f"sqla+sqlite:///{project.path}/var/broker-{time.monotonic_ns()}.db"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def stack(
    project: Project, broker: str, request: pytest.FixtureRequest
) -> Iterator[tuple[Server, dict[str, str]]]:
    """The API under Gunicorn, on PostgreSQL with a real broker or on SQLite with the
    embedded one; the environment a worker needs to join it."""
    postgres_url = None if broker.startswith("sqla") else request.getfixturevalue("postgres_url")
    env = {**project.database(postgres_url), "CELERY_BROKER_URL": broker, **LIMITS}
    with project.serve(workers=2, **env) as server:
        yield server, env


def test_jobs_submitted_over_http_all_succeed(
    project: Project, stack: tuple[Server, dict[str, str]]
) -> None:
    server, env = stack
    files = [csv_file(rows=2000 + 500 * n, seed=n) for n in range(6)]

    with project.celery_worker(CELERY_CONCURRENCY="2", **env):
        urls = [submit(server, data) for data, _ in files]
        jobs = [wait_for(url, FINISHED, within=60) for url in urls]

    for job, (_, expected) in zip(jobs, files, strict=True):
        assert_result(job, expected)
        assert job["attempts"] == 1


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_mid_job_loses_nothing(
    project: Project, stack: tuple[Server, dict[str, str]]
) -> None:
    server, env = stack
    big, big_expected = csv_file(BIG_ROWS, seed=1)
    small = [csv_file(rows=1000, seed=n) for n in range(2, 5)]

    with project.celery_worker(CELERY_CONCURRENCY="1", **env) as first:
        big_url = submit(server, big)
        small_urls = [submit(server, data) for data, _ in small]
        running = wait_for(big_url, ("running", *FINISHED), within=60)
        first.kill()
    with project.celery_worker(CELERY_CONCURRENCY="1", **env):
        big_job = wait_for(big_url, FINISHED, within=90)
        small_jobs = [wait_for(url, FINISHED, within=30) for url in small_urls]

    assert running["status"] == "running", running
    assert_result(big_job, big_expected)
    assert big_job["attempts"] == 2  # the killed run, and the one that finished
    for job, (_, expected) in zip(small_jobs, small, strict=True):
        assert_result(job, expected)
        assert job["attempts"] == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_failing_job_and_a_job_past_its_time_limit_are_recorded_and_the_worker_goes_on(
    project: Project, stack: tuple[Server, dict[str, str]]
) -> None:
    server, env = stack
    big, _ = csv_file(BIG_ROWS, seed=1)
    after, after_expected = csv_file(rows=1000, seed=9)

    with project.celery_worker(**{**env, "CELERY_CONCURRENCY": "1", "CELERY_SOFT_TIME_LIMIT": "1"}):
        bad = wait_for(submit(server, b"group,value\na,1\nb,lots\n"), FINISHED, within=30)
        slow = wait_for(submit(server, big), FINISHED, within=60)
        next_job = wait_for(submit(server, after), FINISHED, within=30)

    assert bad["status"] == "failed"
    assert bad["error"] == "line 3: value 'lots' is not a number"
    assert slow["status"] == "failed"
    assert slow["error"] == "took longer than the time limit of 1 s"
    assert_result(next_job, after_expected)
