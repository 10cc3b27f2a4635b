"""Jobs: the API queues CSV uploads, the aggregation is right, and bad input is refused.

These tests need no worker: they check what the API puts on the broker, and run the
worker's steps (claim, aggregate, finish) directly. The template's own tests run real
Celery workers on Redis, RabbitMQ and the embedded broker.
"""

import csv
import os
import statistics
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.jobs import csvstats, service
from {{ cookiecutter.project_slug }}.jobs.broker import AGGREGATE_CSV
from {{ cookiecutter.project_slug }}.jobs.metrics import remove_dead_workers_dirs
from {{ cookiecutter.project_slug }}.jobs.models import Job, JobStatus
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings

from .conftest import refusal

pytestmark = pytest.mark.anyio

SAMPLE = Path(__file__).parent.parent / "examples" / "orders.csv"


def expected_statistics(path: Path) -> dict[str, dict[str, float]]:
    """The sample's statistics, computed the plain way, independently of csvstats."""
    groups: defaultdict[str, list[float]] = defaultdict(list)
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            groups[row["group"]].append(float(row["value"]))
    return {
        group: {
            "count": len(values),
            "mean": statistics.fmean(values),
            "min": min(values),
            "max": max(values),
            "stdev": statistics.pstdev(values),
            "median": statistics.median(values),
        }
        for group, values in groups.items()
    }


def test_aggregate_matches_a_plain_computation() -> None:
    result = csvstats.aggregate(SAMPLE.read_bytes())

    expected = expected_statistics(SAMPLE)
    assert result["rows"] == sum(group["count"] for group in expected.values())
    assert result["groups"].keys() == expected.keys()
    for group, figures in expected.items():
        for name, value in figures.items():
            assert result["groups"][group][name] == pytest.approx(value), (group, name)


def test_p95_is_the_nearest_rank() -> None:
    rows = "group,value\n" + "".join(f"a,{n}\n" for n in range(1, 101))

    assert csvstats.aggregate(rows.encode())["groups"]["a"]["p95"] == 95


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"group,value\na,1\nb,lots\n", "line 3: value 'lots' is not a number"),
        (b"group,value\na,nan\n", "line 2: value 'nan' is not a finite number"),
        (b"group,value\na,-inf\n", "line 2: value '-inf' is not a finite number"),
        (b"group,value\na\n", "line 2: expected a group and a value, found 1 fields"),
        (b"group,value\n ,1\n", "line 2: the group is empty"),
        (b"group,value\na,1e308\na,1e308\n", "the values are too large to sum"),
        (b'group,value\na,"1\n', "line 2: unexpected end of data"),
        (b"group,value\n" + b"g" * 101 + b",1\n", "line 2: a group name is over 100 characters"),
        (
            b"group,value\n" + b"".join(b"g%d,1\n" % n for n in range(10_001)),
            "line 10002: more than 10000 groups",
        ),
    ],
)
def test_bad_rows_fail_the_job_with_a_message(data: bytes, message: str) -> None:
    with pytest.raises(csvstats.CsvProblem) as problem:
        csvstats.aggregate(data)

    assert message in str(problem.value)


async def test_a_csv_upload_is_queued_with_its_status_url(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    submitted = await client.post("/jobs", files={"file": ("orders.csv", SAMPLE.read_bytes())})

    assert submitted.status_code == 202
    job = submitted.json()
    assert job["status"] == "queued"
    assert job["status_url"] == f"http://testserver/jobs/{job['id']}"
    assert submitted.headers["location"] == job["status_url"]
    status = await client.get(job["status_url"])
    assert status.status_code == 200
    assert status.json()["status"] == "queued"
    assert status.json()["filename"] == "orders.csv"
    assert "result" not in status.json()
    # The broker holds one message for the job, on the heavy jobs' queue.
    with app.state.celery.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.state.celery.conf.task_routes[AGGREGATE_CSV]["queue"])
        message = queue.get(timeout=5)
        assert message.headers["task"] == AGGREGATE_CSV
        assert message.payload[0] == [job["id"]]
        message.ack()
        queue.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "the file is not UTF-8 text"),
        (b"group,value\x00\n", "the file contains NUL characters"),
        (b"name,price\nwidget,3\n", "missing group, value (found 'name', 'price')"),
        (b"group,price\na,3\n", "missing value (found 'group', 'price')"),
        (b"group,value\n", "the file has a header but no rows"),
        (b'group,value\n"a,1\n', "line 2: unexpected end of data"),
        (b"group,value\n" + b"a" * 200_000 + b",1\n", "line 2: field larger than field limit"),
    ],
)
async def test_a_file_that_is_no_usable_csv_is_refused_at_once(
    client: httpx.AsyncClient, data: bytes, message: str
) -> None:
    answer = await client.post("/jobs", files={"file": ("upload.csv", data)})

    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert message in error["msg"]


async def test_a_request_without_a_file_is_refused(client: httpx.AsyncClient) -> None:
    answer = await client.post("/jobs", data={"other": "field"})

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "file"]


async def test_an_upload_over_the_limit_gets_413(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_upload_size": 1000}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            big = b"group,value\n" + b"a,1\n" * 1000
            answer = await client.post("/jobs", files={"file": ("big.csv", big)})

    assert answer.status_code == 413


async def test_an_unreachable_broker_gets_503_and_leaves_no_job(settings: Settings) -> None:
    unreachable = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:9/0"})
    app = create_app(unreachable)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.post("/jobs", files={"file": ("o.csv", SAMPLE.read_bytes())})
            ready = await client.get("/health/ready")
        async with app.state.sessions() as session:
            leftovers = await session.scalar(select(func.count()).select_from(Job))

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert leftovers == 0
    assert ready.status_code == 503
    assert ready.json()["failed"].keys() == {"broker"}


async def test_unknown_and_malformed_job_ids(client: httpx.AsyncClient) -> None:
    unknown = await client.get(f"/jobs/{uuid.uuid4()}")
    malformed = await client.get("/jobs/not-a-uuid")

    assert unknown.status_code == 404
    assert "does not exist" in unknown.json()["detail"]
    assert malformed.status_code == 422


async def test_claim_and_finish_record_one_outcome(client: httpx.AsyncClient, app: FastAPI) -> None:
    submitted = await client.post("/jobs", files={"file": ("o.csv", SAMPLE.read_bytes())})
    job_id = uuid.UUID(submitted.json()["id"])
    result = csvstats.aggregate(SAMPLE.read_bytes())

    async with app.state.sessions() as session:
        assert await service.claim(session, job_id, max_attempts=3) == SAMPLE.read_bytes()
        # The worker was lost; the broker hands the job out again.
        assert await service.claim(session, job_id, max_attempts=3) == SAMPLE.read_bytes()
        await service.finish(session, job_id, result)
        # A late duplicate run neither runs again nor overwrites the outcome.
        assert await service.claim(session, job_id, max_attempts=3) is None
        await service.finish(session, job_id, error="a late duplicate")

    status = (await client.get(f"/jobs/{job_id}")).json()
    assert status["status"] == JobStatus.SUCCEEDED
    assert status["attempts"] == 2
    assert status["result"]["rows"] == result["rows"]
    assert "error" not in status


async def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    submitted = await client.post("/jobs", files={"file": ("o.csv", SAMPLE.read_bytes())})
    job_id = uuid.UUID(submitted.json()["id"])

    async with app.state.sessions() as session:
        for _ in range(2):
            assert await service.claim(session, job_id, max_attempts=2) is not None
        assert await service.claim(session, job_id, max_attempts=2) is None

    status = (await client.get(f"/jobs/{job_id}")).json()
    assert status["status"] == JobStatus.FAILED
    assert status["error"] == "gave up after 2 attempts: the worker running it was lost each time"


def test_a_lost_job_is_queued_again_until_its_attempts_are_spent() -> None:
    # Claims and re-queuings share the budget: the job must keep an attempt for its delivery.
    assert service.verdict(JobStatus.RUNNING, attempts=2, max_attempts=3) is None
    assert service.verdict(JobStatus.RUNNING, attempts=3, max_attempts=3) == (
        "gave up after 3 attempts: the worker running it was lost each time"
    )
    assert service.verdict(JobStatus.QUEUED, attempts=1, max_attempts=3) is None
    assert service.verdict(JobStatus.QUEUED, attempts=2, max_attempts=3) == (
        "gave up after 3 attempts: its queued message was lost each time"
    )


def test_a_stale_bound_within_the_time_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A job still running within its time limit would be queued again beside its live run.
    refused = refusal(
        monkeypatch, CELERY_SOFT_TIME_LIMIT="50", CELERY_TIME_LIMIT="60", JOB_STALE_AFTER="60"
    )

    assert "JOB_STALE_AFTER must exceed CELERY_TIME_LIMIT" in refused


def test_celery_variables_set_the_celery_table_under_their_old_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "CELERY_SOFT_TIME_LIMIT": "200",
        "CELERY_TIME_LIMIT": "250",
        "CELERY_CONCURRENCY": "3",
        "JOB_STALE_AFTER": "400",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CELERY_QUEUE", raising=False)

    settings = Settings(_env_file=None)

    assert (settings.celery.soft_time_limit, settings.celery.time_limit) == (200, 250)
    assert settings.celery.processes_for(cpus=8) == 3
    assert settings.job_stale_after == 400
    assert settings.origins["celery.time_limit"] == "env CELERY_TIME_LIMIT"
    assert settings.origins["celery.queue"].startswith("profile ")


def test_a_bad_celery_variable_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = refusal(monkeypatch, CELERY_TIME_LIMIT="soon")

    assert refused == (
        "invalid configuration: CELERY_TIME_LIMIT: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


@pytest.mark.usefixtures("client")  # the app's lifespan, which opens its sessions
async def test_the_sweep_takes_back_lost_jobs_and_leaves_live_and_waiting_ones(
    app: FastAPI,
) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with app.state.sessions() as session:
        jobs = {
            name: (await service.create_job(session, f"{name}.csv", b"group,value\na,1\n")).id
            for name in ("lost_message", "waiting", "lost_worker", "live", "spent")
        }
        await age(session, jobs["lost_message"], queued_at=long_ago)
        await age(session, jobs["waiting"], queued_at=long_ago + timedelta(minutes=1))
        await age(session, jobs["lost_worker"], status=JobStatus.RUNNING, started_at=long_ago)
        await age(session, jobs["live"], status=JobStatus.RUNNING, started_at=datetime.now(UTC))
        await age(session, jobs["spent"], status=JobStatus.RUNNING, started_at=long_ago, attempts=3)

        # One message still waits on the broker: the newest queued job's.
        swept = await service.sweep(session, stale_after=600, waiting=1, max_attempts=3)
        # Now the two queued again wait there too.
        again = await service.sweep(session, stale_after=600, waiting=3, max_attempts=3)
        found = {
            name: await session.get(Job, job_id, populate_existing=True)
            for name, job_id in jobs.items()
        }

    assert set(swept.requeued) == {jobs["lost_message"], jobs["lost_worker"]}
    assert swept.failed == [jobs["spent"]]
    assert again == service.Swept()
    now = {name: job for name, job in found.items() if job is not None}
    assert {name: job.status for name, job in now.items()} == {
        "lost_message": JobStatus.QUEUED,
        "waiting": JobStatus.QUEUED,
        "lost_worker": JobStatus.QUEUED,
        "live": JobStatus.RUNNING,
        "spent": JobStatus.FAILED,
    }
    assert now["lost_message"].attempts == 1
    assert now["spent"].error == service.gave_up(JobStatus.RUNNING, max_attempts=3)


async def age(session: AsyncSession, job_id: uuid.UUID, **values: Any) -> None:
    await session.execute(update(Job).where(Job.id == job_id).values(values))
    await session.commit()


def test_a_worker_removes_the_metrics_directories_of_dead_workers_only(tmp_path: Path) -> None:
    prefix = "{{ cookiecutter.project_slug }}-worker-metrics-"
    finished = subprocess.Popen([sys.executable, "-c", ""])  # its pid: a worker now gone
    finished.wait()
    own, dead, alive = (tmp_path / f"{prefix}{pid}" for pid in (os.getpid(), finished.pid, 1))
    unrelated = tmp_path / "other-worker-metrics-2"
    for directory in (dead, alive, unrelated):
        directory.mkdir()

    remove_dead_workers_dirs(tmp_path / "set-by-hand")  # not named by this project: no-op
    kept_for_a_hand_set_dir = dead.exists()
    remove_dead_workers_dirs(own)

    assert kept_for_a_hand_set_dir
    assert (dead.exists(), alive.exists(), unrelated.exists()) == (False, True, True)
