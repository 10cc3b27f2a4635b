"""The batch scenario with real Celery workers: jobs submitted over HTTP to Gunicorn finish
correctly on Redis, RabbitMQ and the embedded SQLite broker, a worker killed in the middle
of a job loses nothing on the real brokers, jobs whose message or worker was lost are
swept back onto the queue, a job past the hard time limit is killed and recorded, a hung
broker gets a quick 503, and `make run` (Gunicorn and a worker on the embedded broker) stops
within its graceful timeout every time."""

import asyncio
import functools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from .baked import Project, Server, free_port
from .conftest import require_tool
from .test_websocket import private_redis
from .waiting import PATIENCE, wait_for, wait_until

pytestmark = pytest.mark.parametrize("project", ["batch"], indirect=True)

FINISHED = ("succeeded", "failed")
# Big enough that aggregating it takes well over a second on any machine.
BIG_ROWS = 3_000_000
LIMITS = {
    "MAX_UPLOAD_SIZE": str(64 * 1024 * 1024),
    # Every job here takes milliseconds but the big one, which its test stops at a soft
    # limit of 1 s; and a run the kill test kills goes as soon as the test sees it running.
    # Ten seconds is ample for either on a machine of any speed, however busy.
    "CELERY_SOFT_TIME_LIMIT": "10",
    "CELERY_TIME_LIMIT": "12",
    # Redis hands a lost worker's job to another after this: longer than the time limit,
    # as the settings insist, and no longer, since the kill test waits for it.
    "CELERY_VISIBILITY_TIMEOUT": "15",
}
# The sweeper's tests: a job whose message or worker was lost is back within JOB_STALE_AFTER
# (above the time limit, as the settings insist), long before Redis would give it back.
STALE_AFTER = 15
SWEEPING = {**LIMITS, "CELERY_VISIBILITY_TIMEOUT": "1800", "JOB_STALE_AFTER": str(STALE_AFTER)}
# A job lost at the start of a sweep interval is swept within STALE_AFTER plus that interval;
# the rest is for running it on a busy machine.
SWEPT_WITHIN = STALE_AFTER + 45


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
    answer = httpx.post(f"{server.url}/jobs", files={"file": ("data.csv", data)}, timeout=120)
    assert answer.status_code == 202, answer.text
    status_url: str = answer.json()["status_url"]
    return status_url


def job_once(
    status_url: str, statuses: tuple[str, ...], within: float = PATIENCE
) -> dict[str, Any]:
    """The job, once its status is one of `statuses`."""
    job: dict[str, Any] = wait_for(
        lambda: httpx.get(status_url, timeout=30).json(),
        lambda job: job["status"] in statuses,
        f"the job at {status_url} to be {' or '.join(statuses)}",
        within,
    )
    return job


def swept(server: Server) -> dict[str, float]:
    """jobs_swept_total by outcome, summed over the API's workers."""
    text = httpx.get(server.metrics_url, timeout=30).text
    found = re.findall(r'^jobs_swept_total\{outcome="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {outcome: float(value) for outcome, value in found}


def finished_within_the_bound(urls: list[str], since: float) -> tuple[list[dict[str, Any]], float]:
    """The jobs, once all finished, and the seconds that took from `since`."""
    jobs = [job_once(url, FINISHED, within=SWEPT_WITHIN) for url in urls]
    return jobs, time.monotonic() - since


def assert_each_queued_again_once(
    jobs: list[dict[str, Any]],
    files: list[tuple[bytes, dict[str, dict[str, float]]]],
    counted: dict[str, float],
) -> None:
    for job, (_, expected) in zip(jobs, files, strict=True):
        assert_result(job, expected)
        assert job["attempts"] == 2
    assert counted == {"requeued": len(files), "failed": 0}


def job_statuses(env: dict[str, str]) -> Counter[str]:
    """How many jobs the database holds in each status."""
    url = env["DATABASE_URL"].replace("+asyncpg", "")
    schema = env.get("DATABASE_SCHEMA", "public")

    async def read() -> Counter[str]:
        connection = await asyncpg.connect(url, server_settings={"search_path": schema})
        try:
            return Counter(
                {
                    row["status"]: row["n"]
                    for row in await connection.fetch(
                        "SELECT status, count(*) AS n FROM jobs GROUP BY status"
                    )
                }
            )
        finally:
            await connection.close()

    return asyncio.run(read())


# Recording a job's outcome takes a lock named after the jobs table's schema.
HOLD_OUTCOMES = """
CREATE FUNCTION hold_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(TG_TABLE_SCHEMA));
    RETURN NEW;
END $$;
CREATE TRIGGER hold_outcome BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed')) EXECUTE FUNCTION hold_outcome();
"""


@contextmanager
def outcomes_held(env: dict[str, str]) -> Iterator[None]:
    """While open, a run of a job that has its result waits to record it: it stays in the
    middle of the job, claimed and not acknowledged, on a machine of any speed, until the
    test kills it. (This holds the lock HOLD_OUTCOMES makes recording an outcome take.)"""
    url = env["DATABASE_URL"].replace("+asyncpg", "")
    schema = env.get("DATABASE_SCHEMA", "public")
    with asyncio.Runner() as runner:
        connection = runner.run(asyncpg.connect(url, server_settings={"search_path": schema}))
        try:
            runner.run(connection.execute(HOLD_OUTCOMES))
            runner.run(connection.execute("SELECT pg_advisory_lock(hashtext($1))", schema))
            yield
        finally:
            runner.run(connection.close())  # the lock goes with the session


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
        jobs = [job_once(url, FINISHED) for url in urls]

    for job, (_, expected) in zip(jobs, files, strict=True):
        assert_result(job, expected)
        assert job["attempts"] == 1


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True)
def test_a_worker_killed_mid_job_loses_nothing(
    project: Project, stack: tuple[Server, dict[str, str]]
) -> None:
    server, env = stack
    first, first_expected = csv_file(rows=1000, seed=1)
    queued = [csv_file(rows=1000, seed=n) for n in range(2, 5)]

    with (
        outcomes_held(env),
        project.celery_worker(CELERY_CONCURRENCY="1", **env) as worker,
    ):
        first_url = submit(server, first)
        queued_urls = [submit(server, data) for data, _ in queued]
        job_once(first_url, ("running",))
        worker.kill()
    with project.celery_worker(CELERY_CONCURRENCY="1", **env):
        first_job = job_once(first_url, FINISHED)
        queued_jobs = [job_once(url, FINISHED) for url in queued_urls]

    assert_result(first_job, first_expected)
    assert first_job["attempts"] == 2  # the killed run, and the one that finished
    for job, (_, expected) in zip(queued_jobs, queued, strict=True):
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
        bad = job_once(submit(server, b"group,value\na,1\nb,lots\n"), FINISHED)
        slow = job_once(submit(server, big), FINISHED)
        next_job = job_once(submit(server, after), FINISHED)

    assert bad["status"] == "failed"
    assert bad["error"] == "line 3: value 'lots' is not a number"
    assert slow["status"] == "failed"
    assert slow["error"] == "took longer than the time limit of 1 s"
    assert_result(next_job, after_expected)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_job_past_the_hard_time_limit_is_killed_recorded_failed_and_the_worker_goes_on(
    project: Project, stack: tuple[Server, dict[str, str]]
) -> None:
    server, env = stack
    after, after_expected = csv_file(rows=1000, seed=9)
    # stubborn_jobs' job ignores the soft limit: only the hard one ends it, by killing its
    # pool process.
    limits = {"CELERY_CONCURRENCY": "1", "CELERY_SOFT_TIME_LIMIT": "1", "CELERY_TIME_LIMIT": "2"}

    with project.celery_worker(app="stubborn_jobs:app", **{**env, **limits}) as worker:
        started = time.monotonic()
        killed = job_once(submit(server, b"group,value\nstubborn,1\n"), FINISHED)
        took = time.monotonic() - started
        next_job = job_once(submit(server, after), FINISHED)

    assert killed["status"] == "failed"
    assert killed["error"] == "stopped at the hard time limit of 2 s"
    assert killed["attempts"] == 1  # recorded, not run again
    assert took >= 2
    assert "Hard time limit (2s) exceeded" in worker.log()
    assert_result(next_job, after_expected)


def on_a_private_redis(
    project: Project, postgres_url: str, port: int, **settings: str
) -> dict[str, str]:
    """The service's settings for a fresh database and a Redis broker on `port`."""
    return {
        **project.database(postgres_url),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        **settings,
    }


def test_jobs_whose_messages_a_restarted_broker_lost_are_queued_again_and_finish(
    project: Project, postgres_url: str, summary: Callable[[str], None]
) -> None:
    port = free_port()
    env = on_a_private_redis(project, postgres_url, port, **SWEEPING)
    files = [csv_file(rows=500, seed=n) for n in range(20)]

    with project.serve(workers=2, **env) as server:
        with private_redis(port):
            urls = [submit(server, data) for data, _ in files]
        # The broker comes back without its data: no message of these jobs is left anywhere.
        with private_redis(port), project.celery_worker(CELERY_CONCURRENCY="2", **env):
            jobs, waited = finished_within_the_bound(urls, since=time.monotonic())
        counted = swept(server)

    summary(f"jobs lost with the broker's data: all {len(jobs)} done {waited:.0f} s later")
    assert_each_queued_again_once(jobs, files, counted)  # and run once


def test_jobs_of_a_killed_celery_worker_are_queued_again_before_the_visibility_timeout(
    project: Project, postgres_url: str, redis_url: str, summary: Callable[[str], None]
) -> None:
    env = {**project.database(postgres_url), "CELERY_BROKER_URL": redis_url, **SWEEPING}
    files = [csv_file(rows=1000, seed=n) for n in range(2)]

    with project.serve(workers=2, **env) as server:
        with (
            outcomes_held(env),
            project.celery_worker(CELERY_CONCURRENCY="2", **env) as worker,
        ):
            urls = [submit(server, data) for data, _ in files]
            for url in urls:
                job_once(url, ("running",))
            os.kill(worker.process.pid, signal.SIGKILL)  # the main process, with no warning
            killed = time.monotonic()
        with project.celery_worker(CELERY_CONCURRENCY="2", **env):
            jobs, waited = finished_within_the_bound(urls, since=killed)
        counted = swept(server)

    summary(f"jobs of a SIGKILLed Celery worker: all {len(jobs)} done {waited:.0f} s later")
    assert_each_queued_again_once(jobs, files, counted)  # after the killed run


def test_a_hung_broker_gets_a_quick_503_with_retry_after_and_leaves_no_job(
    project: Project, postgres_url: str, summary: Callable[[str], None]
) -> None:
    port = free_port()
    env = on_a_private_redis(project, postgres_url, port, JOB_PUBLISH_TIMEOUT="1")
    data, _ = csv_file(rows=100, seed=1)

    with private_redis(port) as redis, project.serve(workers=2, **env) as server:
        submit(server, data)  # the broker answered once: a worker holds a connection to it
        redis.send_signal(signal.SIGSTOP)
        try:
            answers, seconds = [], []
            for _ in range(2):  # whichever worker answers, with or without a connection
                started = time.monotonic()
                answers.append(
                    httpx.post(f"{server.url}/jobs", files={"file": ("d.csv", data)}, timeout=60)
                )
                seconds.append(time.monotonic() - started)
        finally:
            redis.send_signal(signal.SIGCONT)
        statuses = job_statuses(env)

    summary(f"POST /jobs with a hung broker: 503 after {max(seconds):.1f} s")
    assert [answer.status_code for answer in answers] == [503, 503]
    assert all(answer.headers["retry-after"] == "5" for answer in answers)
    # JOB_PUBLISH_TIMEOUT, and room for a busy machine: not the broker's socket timeouts.
    assert max(seconds) < 4
    assert statuses == {"queued": 1}  # the one the broker took; none of the refused ones


# make run -------------------------------------------------------------------------------

STOPS = 10


def graceful_timeout(project: Project) -> int:
    """The profile's [gunicorn] graceful_timeout: the scenario's value, or the base's."""
    profiles = project.path / "src" / project.path.name / "profiles"
    values = [tomllib.loads((profiles / f"{name}.toml").read_text()) for name in ("base", "batch")]
    timeout: int = next(
        profile["gunicorn"]["graceful_timeout"]
        for profile in reversed(values)
        if "graceful_timeout" in profile.get("gunicorn", {})
    )
    return timeout


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def logged_pids(log: Path) -> set[int]:
    """Every process that wrote a JSON log line: Gunicorn's, the worker's and its pool's."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return {json.loads(line)["pid"] for line in lines}


def worker_pids(log: Path) -> set[int]:
    """The Celery worker's main process, as its log says (it leads its own session)."""
    return {
        json.loads(line)["pid"]
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"celery.apps.worker"' in line
    }


def serving(url: str, log: Path) -> bool:
    """Whether make run's API is ready and its Celery worker too."""
    try:
        ready = httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
    return ready and " ready." in log.read_text()


def test_make_run_stops_within_its_graceful_timeout_every_time_under_a_queued_job(
    project: Project, summary: Callable[[str], None]
) -> None:
    # A signal to make's process group (Ctrl-C, SIGTERM, a closed terminal) used to reach
    # the worker's pool processes too; one killed while it waited for a job kept the pool's
    # lock, and the worker never stopped. Each stop comes right after two jobs were queued.
    make = require_tool("make")
    project.make("install")
    bound = graceful_timeout(project)
    port = free_port()
    var = project.path / "var"
    var.mkdir(exist_ok=True)
    database = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{var}/stops-{uuid.uuid4().hex}.db",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{var}/stops-broker-{uuid.uuid4().hex}.db",
    }
    env = {
        **project.env,
        **database,
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "WEB_CONCURRENCY": "1",
        "CELERY_CONCURRENCY": "1",
    }
    command = [make, "run", f"VENV={project.venv}", f"PYTHON={project.venv / 'bin' / 'python'}"]
    url = f"http://127.0.0.1:{port}"
    files = [csv_file(rows=2000, seed=n) for n in range(2)]
    job_ids: list[str] = []
    stops: list[float] = []
    queued = 0  # stops with a job still waiting for the worker (it polls SQLite every second)

    for stop in range(STOPS):
        log = var / f"make-run-{port}-{stop}.log"
        with log.open("w") as output:
            run = subprocess.Popen(
                command,
                cwd=project.path,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                functools.partial(serving, url, log),
                f"make run to serve at {url} with its worker ready",
            )
            for data, _ in files:
                answer = httpx.post(f"{url}/jobs", files={"file": ("d.csv", data)}, timeout=60)
                assert answer.status_code == 202, answer.text
                job_ids.append(answer.json()["id"])
            last = httpx.get(f"{url}/jobs/{job_ids[-1]}", timeout=30).json()
            queued += last["status"] == "queued"
            started = time.monotonic()
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(timeout=PATIENCE)
            stops.append(time.monotonic() - started)
        finally:
            # The worker has a session of its own: a failed stop leaves it to kill apart.
            for group in {run.pid} | worker_pids(log):
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            run.wait()
        # What make run started went with it: Gunicorn, the worker and its pool.
        left = [pid for pid in logged_pids(log) if alive(pid)]
        assert left == [], log.read_text()

    # No job was lost on the way: a worker and an API on the same files finish them all.
    with project.celery_worker(**database), project.serve(workers=1, **database) as server:
        jobs = [job_once(f"{server.url}/jobs/{job}", FINISHED) for job in job_ids]

    summary(
        f"make run (batch): {STOPS} SIGTERMs, {queued} with a job queued, each stopped in "
        f"{min(stops):.1f}-{max(stops):.1f} s (graceful timeout {bound} s)"
    )
    assert max(stops) < bound, stops
    assert queued > 0
    for job, (_, expected) in zip(jobs, files * STOPS, strict=True):
        assert_result(job, expected)
