"""A test run's corner of the shared servers: what a killed run left is swept at the next
start, and only that."""

import subprocess

import pytest

from . import services

pytestmark = pytest.mark.quick


@pytest.fixture
def dead_run() -> str:
    """The name a run whose pytest process has exited would have given its things."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    return f"fpt_{services.HOST}_{exited.pid}_gw0"


def test_a_killed_runs_database_is_dropped_and_a_live_runs_kept(
    postgres_url: str, dead_run: str
) -> None:
    postgres = services.Postgres()
    postgres.create(dead_run)

    swept = postgres.sweep()

    assert dead_run in swept
    assert dead_run not in postgres.databases()
    assert services.run_name() in postgres.databases()  # this run's own, still in use


def test_a_killed_runs_redis_keys_are_deleted_and_a_live_runs_kept(
    redis_url: str, dead_run: str
) -> None:
    redis = services.Redis()
    with redis.client() as client:
        client.set(f"{dead_run}:left", "1")
        client.set(f"{services.redis_prefix()}kept", "1")

    swept = redis.sweep()

    assert f"{dead_run}:left" in swept
    assert f"{services.redis_prefix()}kept" in redis.run_keys()


def test_a_killed_runs_vhost_is_deleted(rabbitmq_url: str, dead_run: str) -> None:
    broker = services.RabbitMQ()
    broker.create(dead_run)

    swept = broker.sweep()

    assert dead_run in swept
    assert dead_run not in broker.vhosts()
    assert services.run_name(services.worker_name()) in broker.vhosts()  # rabbitmq_url's own


def test_another_machines_run_is_never_swept(redis_url: str) -> None:
    # Whether a run elsewhere still goes on cannot be told from here: its names stay.
    elsewhere = "fpt_{}_1_gw0:left".format("0" * 6 if services.HOST != "0" * 6 else "1" * 6)
    redis = services.Redis()
    with redis.client() as client:
        client.set(elsewhere, "1")
        try:
            swept = redis.sweep()
            still_there = client.exists(elsewhere)
        finally:
            client.delete(elsewhere)

    assert elsewhere not in swept
    assert still_there
